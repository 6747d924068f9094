//! `gpuctl offers PLAN`: what the plan's provider and each `fallback.if_no_capacity` entry
//! offer right now, with the live price, whether it can be launched now and whether it
//! fits `budget.hourly_usd`; the catalog price beside it, with the day it was read.

use chrono::Utc;
use gpuctl_providers::{price_of, Cloud, Offer, ProviderKind};
use serde::Serialize;

use crate::cli::OffersArgs;
use crate::exit::Exit;
use crate::session::{candidates, live_quote};

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    offer: Offer,
    fits_budget: bool,
}

#[derive(Serialize)]
struct Candidate {
    provider: ProviderKind,
    instance_type: String,
    region: Option<String>,
    catalog_usd_per_hour: Option<f64>,
    catalog_read_on: Option<String>,
    offers: Vec<Row>,
    /// The cheapest offer that can be launched now and fits the budget.
    best: Option<Row>,
    error: Option<String>,
}

pub fn run(args: OffersArgs) -> anyhow::Result<Exit> {
    let c = crate::plan::check_file(&args.plan, Utc::now());
    for p in c.errors() {
        crate::note!("{p}");
    }
    let Some(plan) = c.plan else {
        crate::note!("{}: refused; fix the errors above", args.plan.display());
        return Ok(Exit::Refused);
    };
    let hourly = plan.budget.hourly_usd;
    let fits = |o: &Offer| hourly.is_none_or(|h| o.usd_per_hour <= h);
    let rt = super::runtime()?;
    let mut out = Vec::new();
    for (kind, t, region) in candidates(&plan) {
        if !kind.is_cloud() {
            continue;
        }
        let catalog = price_of(kind, &t);
        let mut cand = Candidate {
            provider: kind,
            instance_type: t.clone(),
            region: region.clone(),
            catalog_usd_per_hour: catalog.as_ref().map(|p| p.usd_per_hour),
            catalog_read_on: catalog.map(|p| p.read_on),
            offers: Vec::new(),
            best: None,
            error: None,
        };
        if !crate::output::json() {
            crate::note!("asking {kind} about {t}...");
        }
        let quote = rt.block_on(async {
            let cloud = Cloud::connect(kind)?;
            live_quote(&cloud, &t, region.as_deref(), plan.instance.gpus).await
        });
        match quote {
            Ok((offers, _)) => {
                cand.offers = offers
                    .into_iter()
                    .map(|o| Row {
                        fits_budget: fits(&o),
                        offer: o,
                    })
                    .collect();
                cand.best = cand
                    .offers
                    .iter()
                    .find(|r| r.offer.available && r.fits_budget)
                    .map(|r| Row {
                        offer: r.offer.clone(),
                        fits_budget: true,
                    });
            }
            Err(e) => cand.error = Some(e.to_string()),
        }
        out.push(cand);
    }
    let any = out.iter().any(|c| c.best.is_some());
    if crate::output::json() {
        let doc = serde_json::json!({
            "plan": plan.name,
            "budget_hourly_usd": hourly,
            "candidates": out,
            "fits": any,
        });
        crate::output::printer().doc(&doc)?;
    } else {
        print_table(&out, hourly);
    }
    if out.is_empty() {
        crate::note!(
            "the plan rents nothing (provider {}): no offers to ask for",
            plan.instance.provider
        );
    }
    Ok(if any { Exit::Done } else { Exit::Failed })
}

fn print_table(out: &[Candidate], hourly: Option<f64>) {
    crate::out!(
        "{:<8} {:<26} {:<14} {:>4} {:>6} {:>9} {:>9} {:<10} FITS",
        "PROVIDER",
        "TYPE",
        "WHERE",
        "GPUS",
        "VRAM",
        "LIVE/H",
        "CATALOG",
        "AVAILABLE"
    );
    for c in out {
        let catalog = super::usd(c.catalog_usd_per_hour);
        if let Some(e) = &c.error {
            crate::out!(
                "{:<8} {:<26} {:<14} {:>4} {:>6} {:>9} {:>9} {:<10} -",
                c.provider.to_string(),
                c.instance_type,
                "-",
                "-",
                "-",
                "-",
                catalog,
                "error"
            );
            crate::out!("  {e}");
            continue;
        }
        if c.offers.is_empty() {
            crate::out!(
                "{:<8} {:<26} {:<14} {:>4} {:>6} {:>9} {:>9} {:<10} -",
                c.provider.to_string(),
                c.instance_type,
                "-",
                "-",
                "-",
                "-",
                catalog,
                "no offer"
            );
        }
        for r in c.offers.iter().take(5) {
            let o = &r.offer;
            crate::out!(
                "{:<8} {:<26} {:<14} {:>4} {:>6} {:>9} {:>9} {:<10} {}",
                c.provider.to_string(),
                o.instance_type,
                o.region.as_deref().unwrap_or("-"),
                o.gpus,
                o.vram_gib
                    .map(|v| format!("{v}G"))
                    .unwrap_or_else(|| "-".into()),
                format!("${:.3}", o.usd_per_hour),
                catalog,
                if o.available { "yes" } else { "no" },
                if r.fits_budget { "yes" } else { "no" }
            );
        }
        if let Some(read) = &c.catalog_read_on {
            crate::out!(
                "  catalog price read {read}; the live price is what a launch is checked against"
            );
        }
    }
    if let Some(h) = hourly {
        crate::out!("budget.hourly_usd = ${h:.2}");
    }
}
