//! The price catalog (`providers/catalog.toml`, built in): the hourly price of each cloud
//! instance type, with the date it was read. Used to refuse an over-budget plan before
//! anything is launched.

use serde::Deserialize;

use crate::ProviderKind;

const CATALOG: &str = include_str!("../catalog.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    pub provider: ProviderKind,
    pub instance_type: String,
    pub usd_per_hour: f64,
    pub read_on: String,
    pub source: String,
}

#[derive(Debug, Deserialize)]
struct File {
    price: Vec<Price>,
}

/// Every price of the built-in catalog (empty if it does not parse, which a test rules out).
pub fn catalog() -> Vec<Price> {
    toml::from_str::<File>(CATALOG)
        .map(|f| f.price)
        .unwrap_or_default()
}

/// The catalog price of one instance type.
pub fn price_of(provider: ProviderKind, instance_type: &str) -> Option<Price> {
    catalog()
        .into_iter()
        .find(|p| p.provider == provider && p.instance_type == instance_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalog_parses_and_dates_every_price() {
        let all = catalog();
        assert!(all.len() >= 6);
        for p in &all {
            assert!(p.usd_per_hour > 0.0);
            assert!(chrono::NaiveDate::parse_from_str(&p.read_on, "%Y-%m-%d").is_ok());
        }
        assert!(price_of(ProviderKind::Lambda, "gpu_1x_a10").is_some());
    }
}
