// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Errors in log lines: the whole chain, printed once.
//!
//! Every error type here carries its cause only as `#[source]`, never repeated in
//! its own message (see issue 16's convention); the binaries print chains with
//! anyhow's `{:#}`. Log lines written inside the library (a connection's end, say)
//! are edges too, and [`Chain`] prints them the same way: `outer: inner: root`.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, separated by ": ".
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_every_cause_once() {
        let e = Outer(std::io::Error::other("root"));
        assert_eq!(Chain(&e).to_string(), "outer: root");
    }
}
