// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Which VM transmit queues a macvlan shard polls, and changing its ports between
//! two polls (ports moved onto or off the macvlan at runtime).
//!
//! Every (VM port, queue pair) of the macvlan, in port order then pair order, is
//! dealt to the shards round-robin: the k-th goes to shard k mod `queues`. A VM
//! with one queue pair on a macvlan of one queue is polled by the one shard, as
//! before; the queue pairs of a multi-queue VM spread over the shards (threads).
//! Every shard computes the same split from the same list, so each transmit queue
//! is polled by exactly one shard.

use std::sync::Arc;

use vpmd_backend::port::{tx_queue, RingCache};

use super::decide::MacvlanTable;
use super::MacvlanShard;
use crate::fwd::VhostEndpoint;

/// The (VM index, queue pair) transmit queues shard `shard` of `queues` polls, for
/// VMs with `pairs[i]` queue pairs each.
pub fn owned_queues(pairs: &[usize], queues: usize, shard: usize) -> Vec<(usize, usize)> {
    pairs
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| (0..n.max(1)).map(move |p| (i, p)))
        .enumerate()
        .filter(|(k, _)| k % queues.max(1) == shard)
        .map(|(_, q)| q)
        .collect()
}

/// `own` for a log line: "vm0, vm1/q1" (a port of one queue pair by its name alone),
/// or "no VM port".
pub fn describe<'n>(
    own: &[(usize, usize)],
    name: impl Fn(usize) -> &'n str,
    pairs: impl Fn(usize) -> usize,
) -> String {
    if own.is_empty() {
        return "no VM port".to_string();
    }
    own.iter()
        .map(|&(i, p)| match pairs(i) {
            1 => name(i).to_string(),
            _ => format!("{}/q{p}", name(i)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl MacvlanShard {
    /// Between two polls, when ports move onto or off the macvlan at runtime: its VM
    /// ports are now `names`, in the order `table` numbers them; a port new to it
    /// comes as `added` (this shard's endpoint for it). As at start-up, the shard
    /// polls the transmit queues [`owned_queues`] gives it.
    /// Returns what it let go of, to be dropped by the caller; if `names` holds a
    /// port that is neither kept nor `added`, changes nothing.
    pub fn set_ports(
        &mut self,
        table: Arc<MacvlanTable>,
        names: &[String],
        added: Option<VhostEndpoint>,
        queues: usize,
        shard: usize,
    ) -> Released {
        let old_names: Vec<String> = self.vms.iter().map(|e| e.port.name().to_string()).collect();
        let known = |n: &String| {
            old_names.contains(n) || added.as_ref().is_some_and(|e| e.port.name() == n)
        };
        if !names.iter().all(known) || queues == 0 {
            log::error!("{}: inconsistent port change ignored", self.name);
            return Released {
                endpoints: added.into_iter().collect(),
                tx_caches: Vec::new(),
            };
        }
        let mut added = added;
        let mut old: Vec<Option<VhostEndpoint>> = std::mem::take(&mut self.vms)
            .into_iter()
            .map(Some)
            .collect();
        let mut old_caches: Vec<((String, usize), RingCache)> = std::mem::take(&mut self.own)
            .into_iter()
            .map(|(i, pair)| (old_names[i].clone(), pair))
            .zip(std::mem::take(&mut self.tx_caches))
            .collect();
        for name in names {
            let endpoint = match old_names.iter().position(|n| n == name) {
                Some(i) => old[i].take(),
                None => added.take(),
            };
            self.vms.extend(endpoint);
        }
        let pairs: Vec<usize> = self.vms.iter().map(|v| v.port.queue_pairs()).collect();
        self.own = owned_queues(&pairs, queues, shard);
        self.tx_caches = self
            .own
            .iter()
            .map(|&(i, pair)| {
                match old_caches
                    .iter()
                    .position(|((n, p), _)| *n == names[i] && *p == pair)
                {
                    Some(k) => old_caches.swap_remove(k).1,
                    None => RingCache::default(),
                }
            })
            .collect();
        self.table = table;
        log::info!(
            "{}: polls the TX queues of {}",
            self.name,
            describe(&self.own, |i| self.vms[i].port.name(), |i| pairs[i])
        );
        Released {
            endpoints: old.into_iter().flatten().collect(),
            tx_caches: old_caches,
        }
    }
}

/// What a shard let go of when its ports changed: the endpoints of ports no
/// longer on the macvlan and the ring caches of transmit queues it no longer
/// polls (by port name). Dropped by the control plane, which lets go of the last
/// mapping of those connections' memory.
pub struct Released {
    /// Endpoints of ports taken off.
    pub endpoints: Vec<VhostEndpoint>,
    /// Transmit-queue caches no longer used, with their port's name and queue pair.
    pub tx_caches: Vec<((String, usize), RingCache)>,
}

impl Released {
    /// Frames port `name`'s guest had made available on its transmit queue that
    /// this shard will not take (the queue is opened and closed, nothing taken).
    pub fn in_flight(&mut self, name: &str) -> u64 {
        let Some(port) = self
            .endpoints
            .iter()
            .find(|e| e.port.name() == name)
            .map(|e| e.port.clone())
        else {
            return 0;
        };
        let mut n = 0;
        for ((_, pair), cache) in self.tx_caches.iter_mut().filter(|((p, _), _)| p == name) {
            if let Some(view) = cache.rings(&port) {
                if let Ok(Some(q)) = view.queue(tx_queue(*pair)) {
                    n += u64::from(q.pending());
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::owned_queues;

    #[test]
    fn every_transmit_queue_is_polled_by_exactly_one_shard() {
        let pairs = [1, 2, 1, 4];
        for queues in 1..=4 {
            let mut all: Vec<(usize, usize)> = (0..queues)
                .flat_map(|s| owned_queues(&pairs, queues, s))
                .collect();
            all.sort_unstable();
            let want: Vec<(usize, usize)> = pairs
                .iter()
                .enumerate()
                .flat_map(|(i, &n)| (0..n).map(move |p| (i, p)))
                .collect();
            assert_eq!(all, want, "{queues} shards");
        }
        assert_eq!(
            owned_queues(&[1, 1, 1], 2, 0),
            vec![(0, 0), (2, 0)],
            "as before MQ"
        );
        assert_eq!(
            owned_queues(&[2], 2, 1),
            vec![(0, 1)],
            "a VM's pairs spread"
        );
    }
}
