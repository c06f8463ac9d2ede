//! Discovery of what is not a plain manifest, with the real programs: charts rendered by the
//! real helm (built from Go modules, `FERRY_REAL_K8S`), kustomizations by the real kubectl. The
//! charts and overlays are written here to reproduce the patterns that defeat a values scan: a
//! tag of `"v" + .Chart.AppVersion` made in a helper, a global registry with a sibling digest, a
//! name assembled from several values, a component turned off, a dependency under `charts/`,
//! an image passed as an argument, an overlay's `images:` rename.

use super::images::{K8S, build_cmd, ferry_cmd, json_stdout, metadata, mirrors, push_control_plane, write_spec};
use ferry_tests::registry::{Layout, Upstream, digest};
use ferry_tests::*;
use payload_format::{ExtractOptions, Payload};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn helm() -> PathBuf {
    real_k8s::newest().program("usr/bin/helm")
}

fn kubectl() -> PathBuf {
    real_k8s::newest().program("usr/bin/kubectl")
}

fn write(root: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

const PINNED: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The chart `web` (see the module docs) at `root/charts/web`, and the launch step's values at
/// `root/charts/values-site.yaml`, which sets the global registry and pins the proxy to `pin`.
fn write_web_chart(root: &Path, pin: &str) {
    let helpers = r#"{{- define "web.image" -}}
{{ .Values.global.image.registry }}/{{ .Values.image.repository }}:v{{ .Chart.AppVersion }}
{{- end -}}
{{- define "web.proxyImage" -}}
{{- if .Values.proxy.digest -}}
{{ .Values.global.image.registry }}/{{ .Values.proxy.repository }}@{{ .Values.proxy.digest }}
{{- else -}}
{{ .Values.global.image.registry }}/{{ .Values.proxy.repository }}:{{ .Chart.AppVersion }}
{{- end -}}
{{- end -}}
{{- define "web.agentImage" -}}
{{ printf "%s/%s/%s:%s" .Values.agent.image.registry .Values.agent.image.namespace .Values.agent.image.name .Chart.AppVersion }}
{{- end -}}
"#;
    let deployment = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: {{ include "web.image" . | quote }}
          args:
            - --worker-image={{ .Values.worker.image }}
        - name: proxy
          image: {{ include "web.proxyImage" . }}
        - name: agent
          image: "{{ include "web.agentImage" . }}"
"#;
    let metrics = r#"{{- if .Values.metrics.enabled }}
apiVersion: apps/v1
kind: Deployment
metadata: {name: {{ .Release.Name }}-metrics}
spec:
  selector: {matchLabels: {app: metrics}}
  template:
    metadata: {labels: {app: metrics}}
    spec:
      containers: [{name: m, image: "docker.io/{{ .Values.metrics.image.repository }}:{{ .Values.metrics.image.tag }}"}]
{{- end }}
"#;
    let test_hook = r#"apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}-test
  annotations: {"helm.sh/hook": test}
spec:
  containers: [{name: t, image: "docker.io/acme/test:1"}]
  restartPolicy: Never
"#;
    let cache = r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: {{ .Release.Name }}-cache}
spec:
  serviceName: cache
  selector: {matchLabels: {app: cache}}
  template:
    metadata: {labels: {app: cache}}
    spec:
      containers:
        - name: redis
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
"#;
    write(
        root,
        &[
            (
                "charts/web/Chart.yaml",
                "apiVersion: v2\nname: web\nversion: 0.3.0\nappVersion: \"1.4.2\"\ndependencies:\n  - {name: cache, version: 0.1.0, repository: https://charts.example.com, condition: cache.enabled}\n",
            ),
            (
                "charts/web/values.yaml",
                "global:\n  image: {registry: registry.example.org}\nimage: {repository: acme/web}\nproxy: {repository: acme/proxy, digest: \"\"}\nagent:\n  image: {registry: quay.io, namespace: acme, name: agent}\nmetrics:\n  enabled: false\n  image: {repository: acme/metrics, tag: \"0.9\"}\nworker: {image: docker.io/acme/worker:2.0}\ncache:\n  enabled: true\n  image: {tag: \"7.4\"}\n",
            ),
            ("charts/web/templates/_helpers.tpl", helpers),
            ("charts/web/templates/deployment.yaml", deployment),
            ("charts/web/templates/metrics.yaml", metrics),
            ("charts/web/templates/tests/test-connection.yaml", test_hook),
            (
                "charts/web/charts/cache/Chart.yaml",
                "apiVersion: v2\nname: cache\nversion: 0.1.0\nappVersion: \"7.2\"\n",
            ),
            ("charts/web/charts/cache/values.yaml", "image: {repository: redis, tag: \"7.2\"}\n"),
            ("charts/web/charts/cache/templates/statefulset.yaml", cache),
            (
                "charts/values-site.yaml",
                &format!("global:\n  image: {{registry: reg.example.com}}\nproxy: {{digest: \"{pin}\"}}\n"),
            ),
        ],
    );
}

const WEB_SPEC: &str = "  charts: [{path: charts}]\n  launch:\n    - {chart: charts/web, values: charts/values-site.yaml, namespace: store, release: shop}\n";

/// The images of the apps and those outside pod specs, from `ferry images --json`.
fn sections(json: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let pick = |section: &str| {
        json["images"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["section"] == section)
            .map(|i| i["ref"].as_str().unwrap().to_string())
            .collect()
    };
    (pick("apps"), pick("outsidePodSpec"))
}

fn entry<'a>(json: &'a Value, r: &str) -> &'a Value {
    json["images"].as_array().unwrap().iter().find(|i| i["ref"] == r).unwrap_or_else(|| panic!("{r} not in {json:#}"))
}

/// docker.io's defaults, as containerd applies them, for comparing with helm's raw output.
fn normalise(r: &str) -> String {
    let first = r.split('/').next().unwrap();
    let r = if r.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
        r.to_string()
    } else if r.contains('/') {
        format!("docker.io/{r}")
    } else {
        format!("docker.io/library/{r}")
    };
    let last = r.rsplit('/').next().unwrap();
    if last.contains(':') || last.contains('@') { r } else { format!("{r}:latest") }
}

#[test]
fn charts_rendered_by_the_real_helm_give_exact_references() {
    let dir = scratch();
    let b = dir.path().join("bundle");
    write_web_chart(&b, PINNED);
    let spec = write_spec(&b, WEB_SPEC);

    let json = json_stdout(ferry_cmd(dir.path()).arg("images").arg("--json").arg("--helm").arg(helm()).arg(&spec));
    let (apps, outside) = sections(&json);
    let want: BTreeSet<String> = [
        "reg.example.com/acme/web:v1.4.2".to_string(),
        format!("reg.example.com/acme/proxy@{PINNED}"),
        "quay.io/acme/agent:1.4.2".to_string(),
        "docker.io/library/redis:7.4".to_string(),
    ]
    .into();
    assert_eq!(
        apps, want,
        "tag from v+appVersion, global registry and digest, an assembled name, the values override; no disabled component, no test hook: {json:#}"
    );
    assert_eq!(outside, BTreeSet::from(["docker.io/acme/worker:2.0".to_string()]));
    assert_eq!(json["totals"]["apps"], 4);
    assert_eq!(json["totals"]["guessed"], 0);
    assert!(json["charts"].as_str().unwrap().contains("charts rendered by helm"), "{json:#}");

    let web = &entry(&json, "reg.example.com/acme/web:v1.4.2")["origins"][0];
    assert_eq!(web["kind"], "chart");
    assert_eq!((web["release"].as_str(), web["namespace"].as_str()), (Some("shop"), Some("store")));
    assert_eq!(web["template"], "templates/deployment.yaml");
    assert_eq!(web["object"], "Deployment shop-web");
    assert_eq!(
        web["values"],
        serde_json::json!(["global.image.registry", "image.repository", "\"v\" + appVersion of chart web"])
    );
    let redis = &entry(&json, "docker.io/library/redis:7.4")["origins"][0];
    assert_eq!(redis["template"], "charts/cache/templates/statefulset.yaml");
    assert_eq!(redis["chart"], "web/cache");
    let worker = &entry(&json, "docker.io/acme/worker:2.0")["origins"][0];
    assert_eq!(worker["how"], "outsidePodSpec");
    assert_eq!(worker["field"], "spec.template.spec.containers[0].args[0]");

    // What ferry found in pod specs is what `helm template … | grep image:` finds.
    let rendered = ok(Command::new(helm())
        .args(["template", "shop"])
        .arg(b.join("charts/web"))
        .args(["--namespace", "store", "--kube-version", K8S, "--skip-tests", "--values"])
        .arg(b.join("charts/values-site.yaml")));
    let grepped: BTreeSet<String> = rendered
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix("image:"))
        .map(|v| normalise(v.trim().trim_matches(['"', '\''])))
        .collect();
    assert_eq!(grepped, apps, "ferry and grep disagree on:\n{rendered}");

    // The listing: sections, chart, release, template and values, totals.
    let listed = ok(ferry_cmd(dir.path()).arg("images").arg("--helm").arg(helm()).arg(&spec));
    assert!(listed.contains("Images the apps run (4):"), "{listed}");
    assert!(listed.contains("Referenced outside a pod spec (1):"), "{listed}");
    assert!(
        listed.contains("chart web (release shop in store) templates/deployment.yaml (Deployment shop-web); values global.image.registry, image.repository"),
        "{listed}"
    );
    assert!(listed.contains("at spec.template.spec.containers[0].args[0], outside a pod spec"), "{listed}");
    assert!(listed.contains(&format!("control plane of Kubernetes {K8S}: 7 images")), "{listed}");
    assert!(
        listed.contains("12 images: 4 the apps run, 1 referenced outside a pod spec, 7 of the control plane"),
        "{listed}"
    );

    // spec.imageExclude drops what the site provides itself; a name matching nothing warns.
    let excluded =
        write_spec(&b, &format!("{WEB_SPEC}  imageExclude: ['docker.io/acme/worker:2.0', 'docker.io/acme/typo:1']\n"));
    let out = run(ferry_cmd(dir.path()).arg("images").arg("--json").arg("--helm").arg(helm()).arg(&excluded));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sections(&json).1, BTreeSet::new());
    assert!(text(&out).contains("spec.imageExclude[1] `docker.io/acme/typo:1`"), "{}", text(&out));
    let cp = write_spec(&b, &format!("{WEB_SPEC}  imageExclude: ['registry.k8s.io/pause:3.10.2']\n"));
    let err = fails(ferry_cmd(dir.path()).arg("images").arg("--helm").arg(helm()).arg(&cp));
    assert!(err.contains("spec.imageExclude[0] `registry.k8s.io/pause:3.10.2` is a control-plane image"), "{err}");

    // The same chart packaged (`helm package`) renders the same.
    ok(Command::new(helm()).arg("package").arg(b.join("charts/web")).arg("-d").arg(b.join("packaged")));
    // Several values files are laid over each other in order, as repeated `helm -f`.
    write(&b, &[("charts/values-cache.yaml", "cache: {image: {tag: \"7.6\"}}\n")]);
    let packaged = write_spec(
        &b,
        "  charts: [{path: packaged}, {path: charts/values-site.yaml}, {path: charts/values-cache.yaml}]\n  launch:\n    - {chart: packaged/web-0.3.0.tgz, values: [charts/values-site.yaml, charts/values-cache.yaml], namespace: store}\n",
    );
    let json = json_stdout(ferry_cmd(dir.path()).arg("images").arg("--json").arg("--helm").arg(helm()).arg(&packaged));
    let mut want_packaged = want.clone();
    want_packaged.remove("docker.io/library/redis:7.4");
    want_packaged.insert("docker.io/library/redis:7.6".to_string());
    assert_eq!(sections(&json).0, want_packaged, "{json:#}");
    assert_eq!(entry(&json, "quay.io/acme/agent:1.4.2")["origins"][0]["release"], "web");
}

#[test]
fn the_bundles_own_helm_renders_and_a_missing_dependency_names_helm_dependency_build() {
    let dir = scratch();
    let b = dir.path().join("bundle");
    write_web_chart(&b, PINNED);
    // The bundle's rootfs carries the helm the installer will run: it renders, with no --helm.
    fs::create_dir_all(b.join("rootfs/usr/bin")).unwrap();
    copy_program(&helm(), &b.join("rootfs/usr/bin/helm"));
    let spec = write_spec(&b, &format!("  rootfs: [{{path: rootfs}}]\n{WEB_SPEC}"));
    let mut cmd = ferry_cmd(dir.path());
    cmd.env_remove("FERRY_HELM").env("PATH", "/usr/bin:/bin");
    let json = json_stdout(cmd.arg("images").arg("--json").arg(&spec));
    assert!(json["charts"].as_str().unwrap().contains("the bundle's rootfs/usr/bin/helm"), "{json:#}");
    assert!(sections(&json).0.contains("reg.example.com/acme/web:v1.4.2"), "{json:#}");

    fs::remove_dir_all(b.join("charts/web/charts/cache")).unwrap();
    let err = fails(ferry_cmd(dir.path()).arg("images").arg("--helm").arg(helm()).arg(&spec));
    assert!(
        err.contains("chart charts/web depends on cache (from https://charts.example.com) that is not in its charts/ directory; run `helm dependency build charts/web` on the connected machine"),
        "{err}"
    );
}

#[test]
fn without_helm_charts_are_refused_or_guessed_and_marked() {
    let dir = scratch();
    let b = dir.path().join("bundle");
    write_web_chart(&b, PINNED);
    let spec = write_spec(&b, WEB_SPEC);
    // ferry_cmd sets FERRY_HELM=none: no helm at all.
    let err = fails(ferry_cmd(dir.path()).arg("images").arg(&spec));
    assert!(err.contains("no helm to render 1 chart (charts/web)"), "{err}");
    assert!(err.contains("--chart-images-from-values"), "{err}");
    let err = fails(&mut build_cmd(&spec, &dir.path().join("installer")));
    assert!(err.contains("no helm to render 1 chart (charts/web)"), "{err}");

    let json =
        json_stdout(ferry_cmd(dir.path()).arg("images").arg("--json").arg("--chart-images-from-values").arg(&spec));
    let guessed: Vec<&Value> = json["images"].as_array().unwrap().iter().filter(|i| i["guessed"] == true).collect();
    let refs: BTreeSet<&str> = guessed.iter().map(|i| i["ref"].as_str().unwrap()).collect();
    assert_eq!(
        refs,
        BTreeSet::from([
            "docker.io/acme/web:1.4.2",
            &format!("docker.io/acme/proxy@{PINNED}"),
            "docker.io/library/redis:7.4",
            "docker.io/acme/worker:2.0",
        ]),
        "the guess misses v+appVersion, the global registry and the assembled name, and says so: {json:#}"
    );
    assert_eq!(json["totals"]["guessed"], 4);
    assert!(!json["images"].as_array().unwrap().iter().any(|i| i["ref"].as_str().unwrap().contains("metrics")));
    let listed = ok(ferry_cmd(dir.path()).arg("images").arg("--chart-images-from-values").arg(&spec));
    assert!(listed.contains("docker.io/acme/web:1.4.2 (guessed)"), "{listed}");
    assert!(listed.contains("chart web values.yaml image.repository, guessed without helm"), "{listed}");
    assert!(listed.contains("are guessed from their values and marked guessed"), "{listed}");

    // A chart whose templates run workloads but whose values name no image: an error, not zero.
    write(
        &b,
        &[
            ("charts/opaque/Chart.yaml", "apiVersion: v2\nname: opaque\nversion: 1.0.0\nappVersion: \"3\"\n"),
            ("charts/opaque/values.yaml", "replicas: 1\n"),
            (
                "charts/opaque/templates/job.yaml",
                "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: x, image: \"acme/{{ .Chart.Name }}:{{ .Chart.AppVersion }}\"}], restartPolicy: Never}}}\n",
            ),
        ],
    );
    let err = fails(ferry_cmd(dir.path()).arg("images").arg("--chart-images-from-values").arg(&spec));
    assert!(
        err.contains(
            "chart opaque: its templates define workloads (templates/job.yaml) but no image was found in its values"
        ),
        "{err}"
    );
    // With helm it is exact.
    let json = json_stdout(ferry_cmd(dir.path()).arg("images").arg("--json").arg("--helm").arg(helm()).arg(&spec));
    assert!(sections(&json).0.contains("docker.io/acme/opaque:3"), "{json:#}");
}

/// A base and two overlays: `prod` renames the image, `remote` names a remote base.
fn write_overlays(root: &Path) {
    write(
        root,
        &[
            ("kustomize/base/kustomization.yaml", "resources: [deployment.yaml]\n"),
            (
                "kustomize/base/deployment.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec:\n  selector: {matchLabels: {app: app}}\n  template:\n    metadata: {labels: {app: app}}\n    spec:\n      containers: [{name: app, image: docker.io/acme/app:1.0}]\n",
            ),
            (
                "kustomize/overlays/prod/kustomization.yaml",
                "resources: [../../base]\nnamePrefix: prod-\nimages:\n  - {name: docker.io/acme/app, newName: reg.example.com/acme/app, newTag: \"2.0\"}\n",
            ),
            (
                "kustomize/overlays/remote/kustomization.yaml",
                "resources:\n  - ../../base\n  - https://github.com/acme/deploy//base?ref=v1\n",
            ),
        ],
    );
}

#[test]
fn kustomize_overlays_are_rendered_and_remote_bases_refused() {
    let dir = scratch();
    let b = dir.path().join("bundle");
    write_overlays(&b);
    let spec = write_spec(&b, "  manifests: [{path: kustomize/overlays/prod}]\n");
    let json =
        json_stdout(ferry_cmd(dir.path()).env("FERRY_KUBECTL", kubectl()).arg("images").arg("--json").arg(&spec));
    assert_eq!(sections(&json).0, BTreeSet::from(["reg.example.com/acme/app:2.0".to_string()]), "{json:#}");
    let origin = &entry(&json, "reg.example.com/acme/app:2.0")["origins"][0];
    assert_eq!((origin["kind"].as_str(), origin["object"].as_str()), (Some("kustomize"), Some("Deployment prod-app")));

    let remote = write_spec(&b, "  manifests: [{path: kustomize/overlays/remote}]\n");
    let err = fails(ferry_cmd(dir.path()).env("FERRY_KUBECTL", kubectl()).arg("images").arg(&remote));
    assert!(err.contains("https://github.com/acme/deploy//base?ref=v1"), "{err}");
    assert!(err.contains("kustomize/overlays/remote/kustomization.yaml"), "{err}");

    // A launch step cannot name a file of a kustomization: only its rendering is carried.
    let inside = write_spec(
        &b,
        "  manifests: [{path: kustomize/overlays/prod}]\n  launch: [{manifests: kustomize/overlays/prod/kustomization.yaml}]\n",
    );
    let err = fails(build_cmd(&inside, &dir.path().join("installer")).env("FERRY_KUBECTL", kubectl()));
    assert!(
        err.contains("spec.launch[0] names bundle/kustomize/overlays/prod/kustomization.yaml, inside the kustomization bundle/kustomize/overlays/prod"),
        "{err}"
    );

    // A kustomization inside a plain manifests directory is not applied as a manifest.
    let nested = write_spec(&b, "  manifests: [{path: kustomize}]\n");
    let err = fails(ferry_cmd(dir.path()).env("FERRY_KUBECTL", kubectl()).arg("images").arg(&nested));
    assert!(
        err.contains("bundle/kustomize/base/kustomization.yaml: a kustomization inside spec.manifests[0].path `kustomize` would be applied as a manifest"),
        "{err}"
    );
}

#[test]
fn the_installer_carries_rendered_charts_images_and_kustomized_manifests() {
    let dir = scratch();
    let up = Upstream::start();
    let layout = Layout::init(&dir.path().join("layout"));
    push_control_plane(&up, &layout);
    layout.image("app", &[("bin/busybox", None)], "amd64");
    let src = layout.src("app");
    for name in [
        "acme/web:v1.4.2",
        "acme/web:1.4.2",
        "acme/proxy:pinned",
        "acme/agent:1.4.2",
        "library/redis:7.4",
        "acme/worker:2.0",
        "acme/app:2.0",
    ] {
        up.push(&src, name);
    }
    let pin = digest(&up.raw_manifest("acme/proxy:pinned"));
    let b = dir.path().join("bundle");
    write_web_chart(&b, &pin);
    write_overlays(&b);
    let registries: Vec<(&str, &Upstream)> =
        ["registry.k8s.io", "reg.example.com", "quay.io", "docker.io"].into_iter().map(|r| (r, &up)).collect();
    let spec = write_spec(
        &b,
        &format!(
            "  manifests: [{{path: kustomize/overlays/prod}}]\n{WEB_SPEC}    - {{manifests: kustomize/overlays/prod}}\n{}",
            mirrors(&registries)
        ),
    );
    let out = dir.path().join("installer");
    ok(build_cmd(&spec, &out).arg("--helm").arg(helm()).env("FERRY_KUBECTL", kubectl()));

    let meta = metadata(&out);
    let refs: BTreeSet<&str> = meta["images"].as_array().unwrap().iter().map(|i| i["ref"].as_str().unwrap()).collect();
    for r in [
        "reg.example.com/acme/web:v1.4.2",
        &format!("reg.example.com/acme/proxy@{pin}"),
        "quay.io/acme/agent:1.4.2",
        "docker.io/library/redis:7.4",
        "docker.io/acme/worker:2.0",
        "reg.example.com/acme/app:2.0",
    ] {
        assert!(refs.contains(r), "{r} not carried: {refs:?}");
    }
    assert_eq!(refs.len(), 6 + 7, "{refs:?}");
    let worker = meta["images"].as_array().unwrap().iter().find(|i| i["ref"] == "docker.io/acme/worker:2.0").unwrap();
    assert_eq!(worker["outsidePodSpec"], true);

    // The overlay is carried rendered: one file, the objects kubectl apply will create.
    let p = Payload::open(&out).unwrap();
    let under: Vec<&str> =
        p.index().entries.iter().map(|e| e.path.as_str()).filter(|e| e.starts_with("bundle/kustomize/")).collect();
    assert_eq!(under, ["bundle/kustomize/overlays/prod", "bundle/kustomize/overlays/prod/kustomized.yaml"]);
    let dest = dir.path().join("extracted");
    let opts = ExtractOptions { dest: dest.clone(), selection: vec!["bundle/kustomize".into()], force: false };
    p.extract(&opts, &|_| {}).unwrap();
    let rendered = fs::read_to_string(dest.join("bundle/kustomize/overlays/prod/kustomized.yaml")).unwrap();
    assert!(
        rendered.contains("name: prod-app") && rendered.contains("image: reg.example.com/acme/app:2.0"),
        "{rendered}"
    );
    let inspected = ok(Command::new(release_bin("ferry")).arg("inspect").arg(&out));
    assert!(inspected.contains("docker.io/acme/worker:2.0") && inspected.contains("outside a pod spec"), "{inspected}");

    // Built without helm on request, the installer says which images were only guessed.
    let guessed = dir.path().join("guessed");
    let log = ok(build_cmd(&spec, &guessed).arg("--chart-images-from-values").env("FERRY_KUBECTL", kubectl()));
    assert!(log.contains("4 images were guessed from chart values, not rendered: docker.io/acme/proxy@"), "{log}");
    let meta = metadata(&guessed);
    let web = meta["images"].as_array().unwrap().iter().find(|i| i["ref"] == "docker.io/acme/web:1.4.2").unwrap();
    assert_eq!(web["guessed"], true, "{web:#}");
    let inspected = ok(Command::new(release_bin("ferry")).arg("inspect").arg(&guessed));
    assert!(
        inspected.lines().any(|l| l.contains("docker.io/acme/web:1.4.2") && l.contains("guessed from chart values")),
        "{inspected}"
    );
}

/// Compares `text` with `tests/golden/images/NAME`; `FERRY_UPDATE_GOLDEN=1` rewrites the file.
fn golden(name: &str, text: &str) {
    let path = workspace_root().join("tests/golden/images").join(name);
    if std::env::var_os("FERRY_UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
    }
    let want = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (FERRY_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(text, want, "{} differs; review, then FERRY_UPDATE_GOLDEN=1", path.display());
}

#[test]
fn the_listing_reads_the_same_as_its_golden_files() {
    let dir = scratch();
    let b = dir.path().join("bundle");
    write_web_chart(&b, PINNED);
    write(
        &b,
        &[(
            "manifests/op.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: op}\nspec:\n  selector: {matchLabels: {app: op}}\n  template:\n    metadata: {labels: {app: op}}\n    spec:\n      containers:\n        - name: op\n          image: quay.io/acme/operator:1.4\n          args: [--config-reloader-image=quay.io/acme/reloader:0.9]\n",
        )],
    );
    let spec = write_spec(&b, &format!("  manifests: [{{path: manifests}}]\n{WEB_SPEC}"));
    let stdout = |c: &mut Command| {
        let out = run(c);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let helm_path = helm().display().to_string();
    let rendered = stdout(ferry_cmd(dir.path()).arg("images").arg("--helm").arg(helm()).arg(&spec));
    golden("rendered.txt", &rendered.replace(&helm_path, "HELM"));
    let guessed = stdout(ferry_cmd(dir.path()).arg("images").arg("--chart-images-from-values").arg(&spec));
    golden("guessed.txt", &guessed);
}
