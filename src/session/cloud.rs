//! Cloud sessions (Lambda, RunPod, Vast): the budget check against the catalog before
//! anything is launched, the launch with its fallbacks, the wait for SSH, and the stop that
//! counts only when the provider reads the instance back as gone.

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::Utc;
use gpuctl_providers::{
    instance_name, price_of, Cloud, InstanceState, LaunchSpec, Launched, Offer, Provider,
    ProviderError, ProviderKind,
};

use super::up::Session;
use crate::db::CloudLaunch;
use crate::evidence::Check;
use crate::plan::Plan;
use crate::progress::Reporter;

/// How long one stop keeps asking the provider before it says "unconfirmed" (the daemon
/// then retries with backoff, for ever): 90 s, or `GPUCTL_STOP_CONFIRM_WINDOW` ("30s").
fn confirm_window() -> Duration {
    crate::settings::settings().stop_confirm_window
}

/// Where a session may run: the plan's instance, then `fallback.if_no_capacity` in order.
pub fn candidates(plan: &Plan) -> Vec<(ProviderKind, String, Option<String>)> {
    let mut out = Vec::new();
    if let Some(t) = &plan.instance.instance_type {
        out.push((
            plan.instance.provider,
            t.clone(),
            plan.instance.region.clone(),
        ));
    }
    for c in &plan.fallback.if_no_capacity {
        out.push((c.provider, c.instance_type.clone(), c.region.clone()));
    }
    out
}

/// The provider's offers now for one candidate (in its region when the plan names one),
/// cheapest first, and the cheapest that can be launched now.
pub async fn live_quote(
    cloud: &Cloud,
    instance_type: &str,
    region: Option<&str>,
    gpus: u32,
) -> Result<(Vec<Offer>, Option<Offer>), ProviderError> {
    let offers: Vec<Offer> = cloud
        .live_offers(instance_type, gpus)
        .await?
        .into_iter()
        // Only Lambda's offers are per region (RunPod's say which cloud, Vast's where the
        // host is): the plan's region narrows those alone.
        .filter(|o| {
            region.is_none()
                || cloud.kind() != ProviderKind::Lambda
                || o.region.as_deref() == region
        })
        .collect();
    let best = offers.iter().find(|o| o.available).cloned();
    Ok((offers, best))
}

/// Refuse, before anything is recorded, what cannot work: no API key, or every candidate
/// above the hourly budget in the catalog. Returns the catalog price of the first candidate.
pub fn precheck(plan: &Plan) -> Result<Option<f64>, String> {
    let hourly = plan.budget.hourly_usd.unwrap_or(f64::INFINITY);
    let mut affordable = 0;
    let mut refused = Vec::new();
    for (kind, t, _) in candidates(plan) {
        if kind.is_cloud() {
            gpuctl_providers::api_key(kind).map_err(|e| e.to_string())?;
        }
        match price_of(kind, &t) {
            Some(p) if p.usd_per_hour > hourly => refused.push(format!(
                "{kind} {t} costs ${:.2}/h in the catalog (read {})",
                p.usd_per_hour, p.read_on
            )),
            _ => affordable += 1,
        }
    }
    if affordable == 0 && !refused.is_empty() {
        return Err(format!(
            "{}, above budget.hourly_usd = ${hourly:.2}: raise the budget or pick a cheaper instance_type",
            refused.join("; ")
        ));
    }
    Ok(plan
        .instance
        .instance_type
        .as_deref()
        .and_then(|t| price_of(plan.instance.provider, t))
        .map(|p| p.usd_per_hour))
}

/// A key name already registered with Lambda, when the user names one
/// (`GPUCTL_LAMBDA_SSH_KEY_NAME`); otherwise the plan's public key is registered.
fn lambda_key_name() -> Option<String> {
    crate::settings::settings().lambda_ssh_key_name.clone()
}

/// The public half of the plan's identity file, given to the provider (Lambda registers
/// it; RunPod's image installs it from `PUBLIC_KEY`). None with ssh-agent only.
fn plan_public_key(plan: &Plan) -> anyhow::Result<Option<String>> {
    let Some(path) = plan.access.identity_file.as_deref() else {
        return Ok(None);
    };
    Ok(Some(crate::ssh::public_key_line(std::path::Path::new(
        path,
    ))?))
}

/// The event kind written just before a launch request is sent.
pub const LAUNCH_REQUEST: &str = "launch_request";
/// How long a stop waits for a launch request already sent to answer (beyond the client's
/// own request timeout, which bounds it too).
const LAUNCH_SETTLE: Duration = Duration::from_secs(120);

/// Where a launch was asked for.
#[derive(Debug, Clone)]
pub struct LaunchAt {
    pub kind: ProviderKind,
    pub instance_type: String,
    pub region: Option<String>,
    /// The catalog's price for it, recorded beside the provider's quote.
    pub catalog: Option<f64>,
}

/// The `launch_request` event's message; `requested_kind` reads the provider back.
fn launch_request_message(at: &LaunchAt, name: &str) -> String {
    format!("{} {}: requesting {name}", at.kind, at.instance_type)
}

fn requested_kind(message: &str) -> Option<ProviderKind> {
    message.split_whitespace().next()?.parse().ok()
}

/// Each provider once, in first-seen order.
fn distinct(kinds: impl IntoIterator<Item = ProviderKind>) -> Vec<ProviderKind> {
    let mut out: Vec<ProviderKind> = Vec::new();
    for k in kinds {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// A launch request in flight, in a task of its own so that nothing cancels it half-way.
pub struct PendingLaunch {
    task: tokio::task::JoinHandle<(Cloud, Result<Launched, ProviderError>)>,
    pub at: LaunchAt,
}

impl PendingLaunch {
    fn start(cloud: Cloud, spec: LaunchSpec, at: LaunchAt) -> PendingLaunch {
        let task = tokio::spawn(async move {
            let r = cloud.launch(&spec).await;
            (cloud, r)
        });
        PendingLaunch { task, at }
    }

    /// The provider's answer. A task that panicked lost its answer: the caller then looks
    /// for the instance by its tag, with a new client.
    async fn answer(&mut self) -> anyhow::Result<(Cloud, Result<Launched, ProviderError>)> {
        match (&mut self.task).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let cloud = Cloud::connect(self.at.kind).map_err(|ce| {
                    anyhow::anyhow!("the launch task failed ({e}), and no new client: {ce}")
                })?;
                let lost = ProviderError::Timeout;
                Ok((cloud, Err(lost)))
            }
        }
    }

    /// The answer, waited for at most `LAUNCH_SETTLE` (the stop's path).
    pub async fn settle(mut self) -> anyhow::Result<(Cloud, Result<Launched, ProviderError>)> {
        match tokio::time::timeout(LAUNCH_SETTLE, self.answer()).await {
            Ok(r) => r,
            Err(_) => {
                self.task.abort();
                let cloud = Cloud::connect(self.at.kind).map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok((cloud, Err(ProviderError::Timeout)))
            }
        }
    }
}

impl Session {
    /// Record a created instance with the key that created it.
    fn record_launch(
        &self,
        cloud: &Cloud,
        at: &LaunchAt,
        instance_id: &str,
        price: Option<f64>,
    ) -> anyhow::Result<()> {
        self.db.record_cloud_launch(
            &self.id,
            &CloudLaunch {
                provider: at.kind.as_str().into(),
                instance_type: at.instance_type.clone(),
                region: at.region.clone(),
                instance_id: instance_id.into(),
                price_usd_per_hour: price,
                catalog_price: at.catalog,
                at: Utc::now(),
                key_sha256: cloud.key_fingerprint(),
            },
        )?;
        self.db.add_event(
            &self.id,
            "launch",
            &format!(
                "{} launched {instance_id} ({}) at {}",
                at.kind,
                at.instance_type,
                price
                    .map(|p| format!("${p:.2}/h as quoted"))
                    .unwrap_or_else(|| "an unquoted price".into())
            ),
            Utc::now(),
        )?;
        Ok(())
    }

    /// Launch (with fallbacks), wait until it runs, and return where to reach it by SSH.
    pub(super) async fn provision(
        &mut self,
        rep: &mut Reporter,
    ) -> anyhow::Result<crate::ssh::SshEndpoint> {
        let hourly = self.plan.budget.hourly_usd;
        let mut tried = Vec::new();
        let mut launched = None;
        let public_key = plan_public_key(&self.plan)?;
        let mut boot_target = None;
        for (kind, t, region) in candidates(&self.plan) {
            if !tried.is_empty() {
                let msg = format!(
                    "fallback.if_no_capacity: trying {kind} {t}{}",
                    region
                        .as_deref()
                        .map(|r| format!(" in {r}"))
                        .unwrap_or_default()
                );
                rep.warn(&msg);
                self.db.add_event(&self.id, "fallback", &msg, Utc::now())?;
                self.alerter().send("fallback", &msg);
            }
            let catalog = price_of(kind, &t).map(|p| p.usd_per_hour);
            if let (Some(p), Some(h)) = (catalog, hourly) {
                if p > h {
                    tried.push(format!(
                        "{kind} {t}: ${p:.2}/h in the catalog, above budget"
                    ));
                    continue;
                }
            }
            let cloud = Cloud::connect(kind).map_err(|e| anyhow::anyhow!("{e}"))?;
            // The live quote is the budget gate; the catalog only stands in when the
            // provider cannot be asked (and its age is said).
            match live_quote(&cloud, &t, region.as_deref(), self.plan.instance.gpus).await {
                Ok((_, None)) => {
                    tried.push(format!("{kind} {t}: no capacity (no live offer now)"));
                    continue;
                }
                Ok((_, Some(o))) => {
                    if let Some(h) = hourly.filter(|h| o.usd_per_hour > *h) {
                        tried.push(format!(
                            "{kind} {t}: ${:.2}/h now, above budget.hourly_usd ${h:.2}",
                            o.usd_per_hour
                        ));
                        continue;
                    }
                }
                Err(ProviderError::Unauthorized) => {
                    bail!("{kind} refused the API key: check its environment variable or credentials file")
                }
                Err(e) => rep.warn(&format!(
                    "{kind} gave no live price ({e}); the budget gate uses the catalog{}",
                    price_of(kind, &t)
                        .map(|p| format!(" (read {})", p.read_on))
                        .unwrap_or_default()
                )),
            }
            let spec = LaunchSpec {
                instance_type: t.clone(),
                region: region.clone(),
                name: instance_name(&self.id),
                gpus: self.plan.instance.gpus,
                disk_gb: self.plan.instance.disk_gb,
                ssh_public_key: public_key.clone(),
                ssh_key_name: lambda_key_name(),
                image: None,
                max_usd_per_hour: hourly,
            };
            rep.step(
                "launch",
                &format!(
                    "launching {t} on {kind}{}",
                    region
                        .as_deref()
                        .map(|r| format!(" in {r}"))
                        .unwrap_or_default()
                ),
            );
            // Announced before it is sent (a state change is committed before its side
            // effect): a stop that finds no instance id looks for this one by its tag.
            let at = LaunchAt {
                kind,
                instance_type: t.clone(),
                region: region.clone(),
                catalog,
            };
            self.db.add_event(
                &self.id,
                LAUNCH_REQUEST,
                &launch_request_message(&at, &spec.name),
                Utc::now(),
            )?;
            let pending = PendingLaunch::start(cloud, spec.clone(), at.clone());
            // Never cancelled half-way: if this future is dropped (Ctrl+C, the deadline), the
            // request goes on in its task and the stop waits for its answer.
            let (cloud, result) = self.pending_launch.insert(pending).answer().await?;
            self.pending_launch = None;
            match result {
                Ok(l) => {
                    self.record_launch(&cloud, &at, &l.instance_id, l.usd_per_hour)?;
                    rep.done(&format!("instance {}", l.instance_id));
                    if let Some(w) = &l.warning {
                        rep.warn(w);
                        self.db
                            .add_event(&self.id, "launch_warning", w, Utc::now())?;
                    }
                    let boot = match self.boot(rep, &cloud, &l).await {
                        Ok(b) => b,
                        Err(e) => {
                            self.cloud = Some(cloud);
                            return Err(e);
                        }
                    };
                    match boot {
                        Boot::Ready(ssh) => {
                            boot_target = Some(ssh);
                            launched = Some(cloud);
                            break;
                        }
                        Boot::Failed(why) => {
                            self.give_up_on(rep, cloud, &l.instance_id, &why).await?;
                            tried.push(format!("{kind} {t}: instance {} {why}", l.instance_id));
                        }
                    }
                }
                Err(ProviderError::NoCapacity(m)) => {
                    rep.done("no capacity");
                    tried.push(format!("{kind} {t}: no capacity ({m})"));
                }
                Err(ProviderError::CreatedAnyway {
                    instance_id,
                    message,
                }) => {
                    // Recorded so that the stop terminates it: no orphan.
                    self.record_launch(&cloud, &at, &instance_id, None)?;
                    self.cloud = Some(cloud);
                    bail!("{kind} refused the launch ({message}) but created instance {instance_id}; it is terminated now");
                }
                Err(ProviderError::Timeout) => {
                    // The answer was lost, not necessarily the launch: look for our tag.
                    let found = match cloud.list().await {
                        Ok(l) => l.into_iter().find(|i| i.name == spec.name),
                        Err(e) => {
                            self.cloud = Some(cloud);
                            bail!("the launch on {kind} timed out and its instances cannot be listed ({e}); the stop looks for {} again", spec.name);
                        }
                    };
                    if let Some(i) = found {
                        self.record_launch(&cloud, &at, &i.id, i.usd_per_hour)?;
                        self.cloud = Some(cloud);
                        bail!("the launch on {kind} timed out, but instance {} ({}) was created; it is terminated now", i.id, spec.name);
                    }
                    bail!(
                        "the launch on {kind} timed out, and no instance named {} exists",
                        spec.name
                    );
                }
                Err(e) => bail!("{kind} refused the launch of {t}: {e}"),
            }
        }
        let Some(cloud) = launched else {
            let next = self
                .plan
                .fallback
                .route
                .map(|r| format!("; the plan's fallback route is {r}"))
                .unwrap_or_default();
            self.no_capacity = true;
            bail!(
                "no capacity anywhere the plan allows ({}){next}",
                tried.join("; ")
            );
        };
        self.cloud = Some(cloud);
        let ssh = boot_target.ok_or_else(|| anyhow::anyhow!("the provider gave no SSH address"))?;
        self.db
            .record_host(&self.id, &format!("{}:{}", ssh.host, ssh.port))?;
        rep.done(&format!("reachable at {}:{}", ssh.host, ssh.port));
        // A new instance has a new host key: trusted on first use (or the plan's pin), and
        // pinned for every later connection once the first one is made.
        Ok(crate::ssh::SshEndpoint {
            user: self.plan.instance.user.clone().unwrap_or(ssh.user),
            // Absolute: the handle stores it for a daemon running elsewhere.
            identity_file: self
                .plan
                .access
                .identity_file
                .as_ref()
                .map(|p| super::up::absolute(std::path::Path::new(p))),
            host_key: match &self.plan.instance.host_key {
                Some(fingerprint) => crate::ssh::HostKeyPolicy::Pinned {
                    fingerprint: fingerprint.clone(),
                },
                None => crate::ssh::HostKeyPolicy::FirstUse,
            },
            ..ssh
        })
    }

    /// An instance that will never run: terminate it, and go on to the next candidate only
    /// once the provider confirms it gone (else the stop keeps trying, as for any instance).
    async fn give_up_on(
        &mut self,
        rep: &mut Reporter,
        cloud: Cloud,
        id: &str,
        why: &str,
    ) -> anyhow::Result<()> {
        rep.warn(&format!(
            "instance {id} is {why}: it will not run; terminating it"
        ));
        let (check, _) = terminate_and_confirm(&cloud, id).await;
        self.db.add_event(
            &self.id,
            "launch_failed",
            &format!("instance {id} was {why}: {}", check.answer),
            Utc::now(),
        )?;
        if !check.passed {
            self.cloud = Some(cloud);
            bail!(
                "instance {id} was {why}, and its terminate is not confirmed: {}",
                check.answer
            );
        }
        Ok(())
    }

    /// After a launch: the quoted price against the budget (it may bring the stop earlier),
    /// then the wait until the instance runs with an SSH address.
    async fn boot(
        &mut self,
        rep: &mut Reporter,
        cloud: &Cloud,
        l: &Launched,
    ) -> anyhow::Result<Boot> {
        let hourly = self.plan.budget.hourly_usd;
        if let (Some(p), Some(h)) = (l.usd_per_hour, hourly) {
            if p > h {
                bail!("the provider quoted ${p:.2}/h at launch, above budget.hourly_usd ${h:.2}; the instance is terminated now");
            }
        }
        if let Some(p) = l.usd_per_hour {
            let created = self.db.get_session(&self.id)?.created_at;
            if let Some((d, cause)) = self.plan.effective_stop(created, Some(p)) {
                if d < self.deadline {
                    self.deadline = d;
                    self.db
                        .record_deadline(&self.id, d, &format!("{cause:?}").to_lowercase())?;
                    rep.warn(&format!(
                        "at ${p:.2}/h the budget brings the stop to {}",
                        d.format("%H:%M:%S UTC")
                    ));
                }
            }
        }
        rep.step("boot", &format!("waiting for {} to boot", l.instance_id));
        let boot_started = Instant::now();
        loop {
            match cloud.get(&l.instance_id).await {
                Ok(i) if i.state == InstanceState::Running => {
                    if let Some(ssh) = i.ssh {
                        self.time("cloud_boot_wait", boot_started);
                        return Ok(Boot::Ready(ssh));
                    }
                }
                Ok(i) if i.state == InstanceState::Gone => {
                    bail!("instance {} disappeared while booting", l.instance_id);
                }
                Ok(gpuctl_providers::Instance {
                    state: InstanceState::Failed(why),
                    ..
                }) => return Ok(Boot::Failed(why)),
                Ok(_) | Err(ProviderError::Timeout) => {}
                Err(e) => rep.warn(&format!("reading the instance back: {e}")),
            }
            if Utc::now()
                > self.deadline
                    - chrono::Duration::from_std(self.plan.stop.grace).unwrap_or_default()
            {
                bail!(
                    "instance {} did not boot before the deadline",
                    l.instance_id
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// How a launched instance's boot ended.
enum Boot {
    Ready(gpuctl_providers::SshEndpoint),
    /// It will never run (the provider's word for it): terminate it and try the next.
    Failed(String),
}

/// Terminate and read back until the provider says the instance is gone (bounded).
pub async fn terminate_and_confirm(cloud: &Cloud, instance_id: &str) -> (Check, u64) {
    let start = Instant::now();
    let calls_before = cloud.calls();
    let mut last = String::from("no answer yet");
    let mut terminate_accepted = false;
    let mut last_terminate: Option<String> = None;
    let mut attempt = 0u32;
    let window = confirm_window();
    while start.elapsed() < window {
        let mut refused = false;
        if !terminate_accepted {
            match cloud.terminate(instance_id).await {
                Ok(()) => terminate_accepted = true,
                Err(e) => {
                    last = format!("terminate: {e}");
                    last_terminate = Some(last.clone());
                    if matches!(
                        e,
                        ProviderError::Unauthorized | ProviderError::Credentials(_)
                    ) {
                        break;
                    }
                    refused = true;
                }
            }
        }
        // The read-back decides, whatever the terminate answered: an instance already gone
        // (an earlier attempt, the agent's own terminate) makes every terminate fail.
        match cloud.get(instance_id).await {
            Ok(i) if i.state == InstanceState::Gone => {
                let calls = cloud.calls() - calls_before;
                return (
                    Check::new(
                        "provider_terminated",
                        true,
                        format!(
                            "{} reads instance {instance_id} back as terminated (gone) after {calls} API call(s)",
                            cloud.kind()
                        ),
                    ),
                    calls,
                );
            }
            Ok(i) => {
                // A terminate answered but not acted on (a wrong answer): ask again.
                if matches!(
                    i.state,
                    InstanceState::Running | InstanceState::Booting | InstanceState::Failed(_)
                ) {
                    terminate_accepted = false;
                }
                last = format!("the provider still reports {:?}", i.state)
            }
            Err(e) => last = format!("read-back: {e}"),
        }
        // An acknowledged terminate that does not progress is asked again now and then.
        if start.elapsed().as_secs() % 20 == 19 {
            terminate_accepted = false;
        }
        let pause = if refused {
            attempt += 1;
            Duration::from_millis(500 * u64::from(attempt.min(8)))
        } else {
            Duration::from_millis(250)
        };
        tokio::time::sleep(pause).await;
    }
    (
        Check::new(
            "provider_terminated",
            false,
            format!(
                "{} has not confirmed that instance {instance_id} is gone ({last}{}); it may still bill",
                cloud.kind(),
                last_terminate
                    .filter(|t| *t != last)
                    .map(|t| format!("; last {t}"))
                    .unwrap_or_default()
            ),
        ),
        cloud.calls() - calls_before,
    )
}

/// What the cloud half of a stop found: its checks, the API calls it made, and when the
/// provider confirmed (None: nothing confirmed, or nothing to confirm).
pub struct CloudStop {
    pub checks: Vec<Check>,
    pub api_calls: Option<(u64, u64)>,
    pub confirmed_at: Option<chrono::DateTime<Utc>>,
}

impl CloudStop {
    fn one(check: Check) -> CloudStop {
        CloudStop {
            checks: vec![check],
            api_calls: None,
            confirmed_at: None,
        }
    }

    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }
}

impl Session {
    /// The cloud half of the stop: settle a launch still in flight, terminate what the row
    /// names (or, with no id, whatever carries the session's tag) and confirm it by
    /// read-back with the key that launched it. Fails closed: "nothing launched" passes
    /// only when no launch was ever requested, or every provider asked lists none.
    pub(super) async fn stop_cloud(&mut self, rep: &mut Reporter) -> CloudStop {
        if let Some(pending) = self.pending_launch.take() {
            rep.step(
                "launch",
                "waiting for the launch request already sent to answer",
            );
            if let Err(e) = self.settle_launch(pending).await {
                rep.warn(&format!("the launch request in flight: {e:#}"));
            }
        }
        // The row as it is now (the launch may just have been recorded); without a row the
        // plan's candidates are searched by tag.
        let row = self.db.get_session(&self.id).ok();
        let record = row.as_ref();
        let instance = record.and_then(|r| r.instance_id.clone());
        let kind = record
            .and_then(|r| r.provider.parse::<ProviderKind>().ok())
            .unwrap_or(self.plan.instance.provider);
        let Some(id) = instance else {
            return self.stop_by_tag(rep, record.is_some()).await;
        };
        let cloud = match self.cloud.take().filter(|c| c.kind() == kind) {
            Some(c) => c,
            None => match Cloud::connect(kind) {
                Ok(c) => c,
                Err(e) => {
                    return CloudStop::one(Check::new(
                        "provider_terminated",
                        false,
                        format!("instance {id}: cannot ask {kind}: {e}"),
                    ))
                }
            },
        };
        if let Some(launched_with) = record.and_then(|r| r.provider_key_sha256.clone()) {
            let now = cloud.key_fingerprint();
            if now != launched_with {
                let var = gpuctl_providers::env_var(kind);
                self.cloud = Some(cloud);
                return CloudStop::one(Check::new(
                    "provider_terminated",
                    false,
                    format!("instance {id} was launched with another {kind} API key (sha256 {launched_with}) than the one set now ({now}): its read-back could say gone for an instance this key cannot see; set {var} to the launching key and run `gpuctl down {}`", self.id),
                ));
            }
        }
        rep.step(
            "terminate",
            &format!("terminating {id} on {kind} and reading it back"),
        );
        let (mut check, stop_calls) = terminate_and_confirm(&cloud, &id).await;
        // Layer 1: what the agent said it would do at the deadline (its own answer, in its
        // final record, stays on the host and goes with the instance).
        let layer1 = self
            .db
            .events(&self.id)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find(|e| e.kind == "layer1");
        if let Some(e) = layer1 {
            check.answer = format!("{}; layer 1: {}", check.answer, e.message);
        }
        let confirmed_at = check.passed.then(Utc::now);
        let api_calls = Some((cloud.calls(), stop_calls));
        self.cloud = Some(cloud);
        CloudStop {
            checks: vec![check],
            api_calls,
            confirmed_at,
        }
    }

    /// Record what a launch in flight created (or said it created).
    async fn settle_launch(&mut self, pending: PendingLaunch) -> anyhow::Result<()> {
        let at = pending.at.clone();
        let (cloud, result) = pending.settle().await?;
        let created = match result {
            Ok(l) => Some((l.instance_id, l.usd_per_hour)),
            Err(ProviderError::CreatedAnyway { instance_id, .. }) => Some((instance_id, None)),
            Err(_) => None,
        };
        if let Some((id, price)) = created {
            self.record_launch(&cloud, &at, &id, price)?;
        }
        self.cloud = Some(cloud);
        Ok(())
    }

    /// No instance id: the providers a launch was requested from are asked for instances
    /// tagged with this session, and each one found is terminated and confirmed.
    async fn stop_by_tag(&mut self, rep: &mut Reporter, row_read: bool) -> CloudStop {
        let requested = match self.db.events(&self.id) {
            Ok(events) if row_read => distinct(
                events
                    .iter()
                    .filter(|e| e.kind == LAUNCH_REQUEST)
                    .filter_map(|e| requested_kind(&e.message)),
            ),
            // The record cannot be read: every provider the plan could have launched on.
            _ => distinct(candidates(&self.plan).into_iter().map(|c| c.0)),
        };
        if requested.is_empty() {
            return CloudStop::one(Check::new(
                "provider_terminated",
                true,
                "no launch was ever requested: no instance exists",
            ));
        }
        let tag = instance_name(&self.id);
        let mut out = CloudStop {
            checks: Vec::new(),
            api_calls: None,
            confirmed_at: None,
        };
        for kind in requested {
            rep.step("terminate", &format!("looking for {tag} on {kind}"));
            let cloud = match Cloud::connect(kind) {
                Ok(c) => c,
                Err(e) => {
                    out.checks.push(Check::new("provider_terminated", false, format!("a launch was requested on {kind}, and it cannot be asked whether one exists: {e}")));
                    continue;
                }
            };
            let found = match cloud.list().await {
                Ok(l) => l
                    .into_iter()
                    .filter(|i| i.name == tag && i.state != InstanceState::Gone)
                    .collect::<Vec<_>>(),
                Err(e) => {
                    out.checks.push(Check::new("provider_terminated", false, format!("a launch was requested on {kind}, and its instances cannot be listed to find {tag}: {e}; it may bill")));
                    continue;
                }
            };
            if found.is_empty() {
                out.checks.push(Check::new(
                    "provider_terminated",
                    true,
                    format!("{kind} lists no instance tagged {tag}: the launch created none"),
                ));
            }
            for i in found {
                let (check, _) = terminate_and_confirm(&cloud, &i.id).await;
                out.checks.push(check);
            }
        }
        if out.passed() {
            out.confirmed_at = Some(Utc::now());
        }
        out
    }
}
