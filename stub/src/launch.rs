//! Launch steps (issue 6, "Apps"): the bundle's `spec.launch`, carried in the payload metadata
//! (`metadata.extra.launch`), run in order on master0 after the control plane is up:
//! `{manifests: PATH}` with the rootfs's kubectl, `{chart: PATH, values, namespace}` with its
//! helm (offline, from the bundled chart), `{run: COMMAND}` with sh. Paths are payload entry
//! paths; master0 extracts them from its own copy of the installer. A failing step stops the
//! run with its output.

use crate::run::{Ctx, checked};
use crate::ssh::{RemoteHost, quote};
use anyhow::{Result, anyhow};
use payload_format::Payload;
use serde::Deserialize;

/// One step.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// Manifests (a payload path: file or directory) for `kubectl apply`.
    #[serde(default)]
    pub manifests: Option<String>,
    /// A chart (payload path) for `helm upgrade --install`.
    #[serde(default)]
    pub chart: Option<String>,
    /// Values file (payload path) for the chart.
    #[serde(default)]
    pub values: Option<String>,
    /// Namespace for the chart or the manifests.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A shell command.
    #[serde(default)]
    pub run: Option<String>,
}

impl Step {
    /// The namespace whose pods `check` counts as this step's workloads.
    pub fn namespace(&self) -> Option<String> {
        self.namespace.clone()
    }

    fn describe(&self) -> String {
        if let Some(m) = &self.manifests {
            format!("manifests {m}")
        } else if let Some(c) = &self.chart {
            format!("chart {c}")
        } else {
            format!("run {}", self.run.as_deref().unwrap_or(""))
        }
    }

    /// The command master0 runs (from /var/lib/ferry/launch, where the paths were extracted).
    fn command(&self) -> String {
        let kc = crate::run::control::ADMIN_CONF;
        let ns = self.namespace.as_deref().map(|n| format!(" --namespace {}", quote(n))).unwrap_or_default();
        if let Some(m) = &self.manifests {
            format!("cd {LAUNCH_DIR} && kubectl --kubeconfig {kc} apply{ns} -f {} 2>&1", quote(m))
        } else if let Some(c) = &self.chart {
            let name = std::path::Path::new(c)
                .file_stem()
                .map(|s| s.to_string_lossy().trim_end_matches(".tar").to_string())
                .unwrap_or_else(|| "app".into());
            let values = self.values.as_deref().map(|v| format!(" -f {}", quote(v))).unwrap_or_default();
            format!(
                "cd {LAUNCH_DIR} && helm --kubeconfig {kc} upgrade --install {} {}{ns} --create-namespace{values} 2>&1",
                quote(&name),
                quote(c)
            )
        } else {
            format!("cd {LAUNCH_DIR} && KUBECONFIG={kc} sh -c {} 2>&1", quote(self.run.as_deref().unwrap_or("true")))
        }
    }
}

/// Where master0 extracts the steps' files.
pub const LAUNCH_DIR: &str = "/var/lib/ferry/launch";

/// The steps the payload carries (none when the bundle declares none).
pub fn steps(payload: &Payload) -> Vec<Step> {
    payload
        .index()
        .metadata
        .extra
        .get("launch")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Runs every step in order on master0; the first failure stops with its output.
pub async fn run_steps<H: RemoteHost>(ctx: &Ctx, h: &H) -> Result<()> {
    let steps = steps(&ctx.payload);
    if steps.is_empty() {
        return Ok(());
    }
    let mut paths: Vec<&str> = steps
        .iter()
        .flat_map(|s| [s.manifests.as_deref(), s.chart.as_deref(), s.values.as_deref()])
        .flatten()
        .collect();
    paths.sort();
    paths.dedup();
    if !paths.is_empty() {
        let args: Vec<String> = paths.iter().map(|p| quote(p)).collect();
        checked(
            h,
            &format!(
                "mkdir -p {LAUNCH_DIR} && {} extract --force --to {LAUNCH_DIR} {}",
                crate::agent::INSTALLER_PATH,
                args.join(" ")
            ),
            b"",
            "extracting the launch steps' files",
        )
        .await
        .map_err(|e| anyhow!("{}: launch failed: {e:#}", h.addr()))?;
    }
    for (i, s) in steps.iter().enumerate() {
        let what = format!("launch step {} ({})", i + 1, s.describe());
        ctx.rep.event(h.addr(), "launch", "start", &what, serde_json::json!({"step": i + 1}));
        let out = h.run(&s.command(), b"").await?;
        if !out.ok() {
            ctx.rep.finish();
            return Err(anyhow!(
                "{}: {what} failed (status {}); its output:\n{}",
                h.addr(),
                out.status,
                crate::ssh::tail_lines(&out.text(), 20)
            ));
        }
        ctx.rep.event(h.addr(), "launch", "done", &what, serde_json::json!({"step": i + 1}));
    }
    Ok(())
}
