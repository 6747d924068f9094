//! The budget meter: cost so far = price at launch x billed time, at the provider's billing
//! granularity. The stop for `max_total_usd` is part of the deadline (see
//! `Plan::effective_stop`); this adds the warning at 80 %.

use chrono::{DateTime, Utc};
use gpuctl_providers::BillingGranularity;

use crate::db::SessionRecord;

/// Share of `max_total_usd` at which the session says it is close to its budget.
pub const WARN_SHARE: f64 = 0.8;

/// Dollars billed from `launched` to `now`.
pub fn cost_so_far(
    price_per_hour: f64,
    launched: DateTime<Utc>,
    now: DateTime<Utc>,
    billing: BillingGranularity,
) -> f64 {
    let billed = billing.billed((now - launched).to_std().unwrap_or_default());
    price_per_hour * billed.as_secs_f64() / 3600.0
}

/// What the meter says about a live session: (cost so far, max total), when it has both.
pub fn meter(s: &SessionRecord, now: DateTime<Utc>) -> Option<(f64, f64)> {
    let price = s.price_usd_per_hour.filter(|p| *p > 0.0)?;
    let max = s.max_total_usd.filter(|m| *m > 0.0)?;
    let launched = s.launched_at?;
    let billing = gpuctl_providers::billing_of_name(&s.provider);
    Some((cost_so_far(price, launched, now, billing), max))
}

/// When the cost reaches the warning share of the budget (per-second billing).
pub fn warn_at(
    price_per_hour: f64,
    max_total: f64,
    launched: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if price_per_hour <= 0.0 || max_total <= 0.0 {
        return None;
    }
    let secs = (max_total * WARN_SHARE / price_per_hour * 3600.0).ceil();
    (secs.is_finite() && secs < 1e9).then(|| launched + chrono::Duration::seconds(secs as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_follows_the_billing_unit() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("time");
        let t1 = t0 + chrono::Duration::seconds(90);
        let per_s = cost_so_far(3.6, t0, t1, BillingGranularity::PerSecond);
        assert!((per_s - 0.09).abs() < 1e-9);
        let per_h = cost_so_far(3.6, t0, t1, BillingGranularity::PerHour);
        assert!((per_h - 3.6).abs() < 1e-9);
        // $1/h against $1: 80 % after 48 minutes.
        assert_eq!(
            warn_at(1.0, 1.0, t0),
            Some(t0 + chrono::Duration::minutes(48))
        );
    }
}
