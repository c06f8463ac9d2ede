//! Launch steps (the bundle's apps): the bundle's `spec.launch`, carried in the payload metadata
//! (`metadata.extra.launch`), run in order on master0 after the control plane is up:
//! `{manifests: PATH}` with the rootfs's kubectl, `{chart: PATH, values, namespace}` with its
//! helm (offline, from the bundled chart), `{run: COMMAND}` with sh. Paths are payload entry
//! paths; master0 extracts them from its own copy of the installer. A failing step stops the
//! run with its output.

use crate::run::checked;
use crate::run::progress::Reporter;
use crate::ssh::{RemoteHost, quote};
use anyhow::{Result, anyhow};
use payload_format::Payload;
use serde::Deserialize;

/// One step.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// Manifests (a payload path: file or directory) for `kubectl apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<String>,
    /// A chart (payload path) for `helm upgrade --install`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    /// Values file (payload path) for the chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<String>,
    /// Namespace for the chart or the manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A shell command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl Step {
    /// The namespace whose pods `check` counts as this step's workloads.
    pub fn namespace(&self) -> Option<String> {
        self.namespace.clone()
    }

    /// `manifests PATH`, `chart PATH` or `run COMMAND`, with the namespace and values.
    pub fn describe(&self) -> String {
        let ns = self.namespace.as_deref().map(|n| format!(" in namespace {n}")).unwrap_or_default();
        if let Some(m) = &self.manifests {
            format!("manifests {m}{ns}")
        } else if let Some(c) = &self.chart {
            let values = self.values.as_deref().map(|v| format!(" with values {v}")).unwrap_or_default();
            format!("chart {c}{values}{ns}")
        } else {
            format!("run {}", self.run.as_deref().unwrap_or(""))
        }
    }

    /// The Helm release name for a chart step: the chart directory's name, or a packaged
    /// chart's name without `.tgz` and its `-VERSION` (helm package writes `NAME-VERSION.tgz`),
    /// made a valid release name (lowercase letters, digits, `-`, at most 53 characters).
    pub fn release_name(chart: &str) -> String {
        let base = chart.trim_end_matches('/').rsplit('/').next().unwrap_or(chart);
        let mut name = base.strip_suffix(".tgz").or_else(|| base.strip_suffix(".tar.gz")).unwrap_or(base).to_string();
        if name.len() != base.len() {
            // `app-1.2.3` → `app`: cut at the last `-` followed by a version (`1.2.3`, `v1.2.3`).
            let version = |v: &str| v.trim_start_matches('v').starts_with(|c: char| c.is_ascii_digit());
            if let Some(i) = name.rfind('-').filter(|&i| version(&name[i + 1..])) {
                name.truncate(i);
            }
        }
        let mut out: String = name
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
            .collect();
        out.truncate(53);
        let out = out.trim_matches('-').to_string();
        if out.is_empty() { "app".into() } else { out }
    }

    /// The command master0 runs (from /var/lib/ferry/launch, where the paths were extracted).
    fn command(&self) -> String {
        let kc = crate::node::ADMIN_CONF;
        let ns = self.namespace.as_deref().map(|n| format!(" --namespace {}", quote(n))).unwrap_or_default();
        if let Some(m) = &self.manifests {
            format!("cd {LAUNCH_DIR} && kubectl --kubeconfig {kc} apply{ns} -f {} 2>&1", quote(m))
        } else if let Some(c) = &self.chart {
            let name = Self::release_name(c);
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

/// The steps the payload carries (none when the bundle declares none). A `launch` entry this
/// installer cannot read is an error, not silently no steps.
pub fn steps(payload: &Payload) -> Result<Vec<Step>> {
    match payload.index().metadata.extra.get("launch") {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            anyhow!(
                "{}: the launch steps in its metadata are unreadable ({e}); was it built by a newer ferry?",
                payload.path().display()
            )
        }),
    }
}

/// The last `n` non-empty lines of a step's output, indented, for the error.
fn output_tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        return "  (no output)".into();
    }
    let skipped = lines.len().saturating_sub(n);
    let mut out = if skipped > 0 { format!("  … {skipped} earlier lines\n") } else { String::new() };
    out.push_str(&lines[skipped..].iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"));
    out
}

/// Runs every step in order on master0; the first failure stops with its output.
pub async fn run_steps<H: RemoteHost>(payload: &Payload, rep: &Reporter, h: &H) -> Result<()> {
    let steps = steps(payload)?;
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
    // A fresh directory every run (files a newer bundle dropped must not be applied again); it
    // exists even for `run` steps alone, which start in it.
    let mut prep = format!("rm -rf {LAUNCH_DIR} && mkdir -p {LAUNCH_DIR}");
    if !paths.is_empty() {
        let args: Vec<String> = paths.iter().map(|p| quote(p)).collect();
        prep.push_str(&format!(
            " && {} extract --force --to {LAUNCH_DIR} {}",
            crate::agent::INSTALLER_PATH,
            args.join(" ")
        ));
    }
    checked(h, &prep, b"", "extracting the launch steps' files")
        .await
        .map_err(|e| anyhow!("{}: launch failed: {e:#}", h.addr()))?;
    for (i, s) in steps.iter().enumerate() {
        let what = format!("launch step {} ({})", i + 1, s.describe());
        rep.event(h.addr(), "launch", "start", &what, serde_json::json!({"step": i + 1}));
        let out = h.run(&s.command(), b"").await.map_err(|e| anyhow!("{}: {what}: {e:#}", h.addr()))?;
        if !out.ok() {
            rep.finish();
            return Err(anyhow!(
                "{}: {what} failed (status {}); its output:\n{}",
                h.addr(),
                out.status,
                output_tail(&out.text(), 30)
            ));
        }
        rep.event(h.addr(), "launch", "done", &format!("{what}: ok"), serde_json::json!({"step": i + 1}));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(json: serde_json::Value) -> Step {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn commands_are_the_real_tools_command_lines() {
        let kc = crate::node::ADMIN_CONF;
        let m = step(serde_json::json!({"manifests": "bundle/manifests/web.yaml", "namespace": "demo"}));
        assert_eq!(
            m.command(),
            format!(
                "cd {LAUNCH_DIR} && kubectl --kubeconfig {kc} apply --namespace demo -f bundle/manifests/web.yaml 2>&1"
            )
        );
        let c = step(
            serde_json::json!({"chart": "bundle/charts/ingress-nginx-4.11.2.tgz", "values": "bundle/charts/values prod.yaml", "namespace": "ingress"}),
        );
        assert_eq!(
            c.command(),
            format!(
                "cd {LAUNCH_DIR} && helm --kubeconfig {kc} upgrade --install ingress-nginx bundle/charts/ingress-nginx-4.11.2.tgz --namespace ingress --create-namespace -f 'bundle/charts/values prod.yaml' 2>&1"
            )
        );
        let d = step(serde_json::json!({"chart": "bundle/charts/my_App/"}));
        assert_eq!(
            d.command(),
            format!(
                "cd {LAUNCH_DIR} && helm --kubeconfig {kc} upgrade --install my-app bundle/charts/my_App/ --create-namespace 2>&1"
            )
        );
        let r = step(serde_json::json!({"run": "echo it's > out"}));
        assert_eq!(r.command(), format!("cd {LAUNCH_DIR} && KUBECONFIG={kc} sh -c 'echo it'\\''s > out' 2>&1"));
    }

    #[test]
    fn release_names() {
        assert_eq!(Step::release_name("bundle/charts/app"), "app");
        assert_eq!(Step::release_name("bundle/charts/app-1.2.3.tgz"), "app");
        assert_eq!(Step::release_name("bundle/charts/cert-manager-v1.15.0.tgz"), "cert-manager");
        assert_eq!(Step::release_name("bundle/charts/kube-prometheus-stack-61.3.2.tar.gz"), "kube-prometheus-stack");
        assert_eq!(Step::release_name("bundle/charts/my-chart-2"), "my-chart-2");
        assert_eq!(Step::release_name("bundle/charts/__"), "app");
    }

    #[test]
    fn describe_names_the_step() {
        assert_eq!(
            step(serde_json::json!({"chart": "bundle/charts/a", "values": "bundle/v.yaml", "namespace": "x"}))
                .describe(),
            "chart bundle/charts/a with values bundle/v.yaml in namespace x"
        );
        assert_eq!(step(serde_json::json!({"run": "make it"})).describe(), "run make it");
    }

    #[test]
    fn failing_output_keeps_the_last_lines() {
        let text: String = (1..=40).map(|i| format!("line {i}\n")).collect();
        let t = output_tail(&text, 30);
        assert!(t.starts_with("  … 10 earlier lines\n  line 11\n"), "{t}");
        assert!(t.ends_with("  line 40"), "{t}");
        assert_eq!(output_tail("", 30), "  (no output)");
    }

    #[test]
    fn unknown_fields_in_the_metadata_are_refused() {
        assert!(serde_json::from_value::<Step>(serde_json::json!({"run": "x", "later": 1})).is_err());
    }
}
