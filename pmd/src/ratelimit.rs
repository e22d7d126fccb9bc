// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Rate limiting for log lines a guest can trigger: the limiter lives in the backend
//! crate (the vhost-user connection threads use it too) and is re-exported here.

pub use vpmd_backend::ratelimit::LogLimiter;
