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

/// One step: exactly one of manifests, chart or run (`ferry_core::launch`).
pub use ferry_core::launch::LaunchStep as Step;

/// How master0 runs a step.
trait Command {
    /// The command master0 runs (from /var/lib/ferry/launch, where the paths were extracted).
    fn command(&self) -> String;
}

impl Command for Step {
    fn command(&self) -> String {
        let kc = crate::node::ADMIN_CONF;
        let ns = self.namespace().map(|n| format!(" --namespace {}", quote(&n))).unwrap_or_default();
        match self {
            Step::Manifests { path, .. } => {
                format!("cd {LAUNCH_DIR} && kubectl --kubeconfig {kc} apply{ns} -f {} 2>&1", quote(path))
            }
            Step::Chart { path, values, .. } => {
                let name = self.release().unwrap_or_else(|| Self::release_name(path));
                let values: String = values.iter().map(|v| format!(" -f {}", quote(v))).collect();
                format!(
                    "cd {LAUNCH_DIR} && helm --kubeconfig {kc} upgrade --install {} {}{ns} --create-namespace{values} 2>&1",
                    quote(&name),
                    quote(path)
                )
            }
            Step::Run { command } => format!("cd {LAUNCH_DIR} && KUBECONFIG={kc} sh -c {} 2>&1", quote(command)),
        }
    }
}

/// Where master0 extracts the steps' files.
pub const LAUNCH_DIR: &str = "/var/lib/ferry/launch";

/// The steps the payload carries (none when the bundle declares none). A `launch` entry this
/// installer cannot read is an error, not silently no steps.
pub fn steps(payload: &Payload) -> Result<Vec<Step>> {
    Ok(ferry_core::metadata::launch_steps_in(payload)?)
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
    let mut paths: Vec<&str> = steps.iter().flat_map(|s| s.paths()).collect();
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
        let named = step(
            serde_json::json!({"chart": "bundle/charts/web", "release": "shop", "namespace": "store", "values": ["bundle/a.yaml", "bundle/b.yaml"]}),
        );
        assert_eq!(
            named.command(),
            format!(
                "cd {LAUNCH_DIR} && helm --kubeconfig {kc} upgrade --install shop bundle/charts/web --namespace store --create-namespace -f bundle/a.yaml -f bundle/b.yaml 2>&1"
            ),
            "the release the packer rendered the chart as"
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
