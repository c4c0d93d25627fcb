//! Rate limits per caller, so one misbehaving GP system (or a runaway console tab) cannot
//! starve the others: a token bucket per machine client and per staff session, with
//! `governor` (a well-kept GCRA implementation: lock-free, keyed, no timers to run).
//!
//! Only authenticated callers are limited: the open modes serve a developer on their own
//! machine, or a deployment whose gateway in front limits (`auth.mode = "none"`).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::identity::{Access, Caller};

/// The limiter, shared by every request.
#[derive(Debug)]
pub struct RateLimits {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl RateLimits {
    /// `per_minute` requests a minute with bursts of `burst` (0: `per_minute`); `None`
    /// when `per_minute` is 0 (no limit).
    pub fn new(per_minute: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    /// `None` when the caller may go on; otherwise how long until it may.
    pub fn check(&self, access: &Access) -> Option<Duration> {
        let key = match access.caller() {
            Caller::Client { .. } => access.sender_key(),
            // A staff session: the token it signed in with (each sign-in its own bucket).
            Caller::Staff { username, .. } => match access.token_id() {
                Some(token) => format!("staff-session:{token}"),
                None => format!("staff:{username}"),
            },
            Caller::Developer | Caller::Unauthenticated => return None,
        };
        let refused = self.limiter.check_key(&key).err()?;
        // Forget callers whose bucket is full again, so the map stays as small as the set
        // of recent callers.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        Some(refused.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_is_no_limit() {
        assert!(RateLimits::new(0, 10).is_none());
        let limits = RateLimits::new(60, 0).expect("limits");
        assert!(
            limits.check(&Access::developer_for_tests()).is_none(),
            "the open modes are not limited"
        );
    }
}
