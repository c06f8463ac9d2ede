//! Where an image was found and how sure discovery is of it: the answer `ferry images`, the
//! build's errors and the installer's `foundIn` give to "why is this image in my installer?".

use serde_json::{Value, json};
use std::fmt;

/// The place that named an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// Listed in `spec.images`.
    SpecImages,
    /// A manifest file of `spec.manifests`.
    Manifest {
        /// `bundle/<path>`.
        file: String,
        /// 1-based line of the reference in that file.
        line: usize,
        /// `Kind name` of the object.
        object: String,
    },
    /// A kustomization of `spec.manifests`, rendered at build time.
    Kustomized {
        /// `bundle/<dir>`.
        dir: String,
        /// `Kind name` of the rendered object.
        object: String,
    },
    /// A chart rendered by helm.
    Chart {
        /// The chart's name (`Chart.yaml`).
        chart: String,
        /// The release rendered.
        release: String,
        /// Its namespace.
        namespace: String,
        /// The template that made the object (`templates/deployment.yaml`).
        template: Option<String>,
        /// `Kind name` of the rendered object.
        object: String,
        /// The values (and `Chart.yaml` fields) the reference is made of, best effort.
        values: Vec<String>,
    },
    /// A value of a chart's `values.yaml`, read without rendering the chart.
    ChartValues {
        /// The chart's name, `parent/sub` for a subchart.
        chart: String,
        /// The values path (`image.repository`).
        path: String,
    },
    /// A chart's `artifacthub.io/images` annotation.
    ChartAnnotation {
        /// The chart's name, `parent/sub` for a subchart.
        chart: String,
    },
    /// The list kubeadm pulls for the control plane.
    ControlPlane {
        /// `spec.kubernetes.version`.
        version: String,
    },
}

/// How the reference was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum How {
    /// In a pod spec's containers (or a custom resource's `…containers` list), or listed.
    PodSpec,
    /// Somewhere else a reference is known to live: a container's `--…-image=` argument or
    /// `…IMAGE` variable, a custom resource's `…image` field, the chart's image annotation. What
    /// pulls it is not kubelet's pod spec but a program, at run time.
    OutsidePodSpec {
        /// The field, `spec.template.spec.containers[0].args[2]`.
        field: String,
    },
    /// Guessed from a chart's values without rendering it.
    Guessed,
}

/// One place that named an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Where.
    pub place: Place,
    /// How.
    pub how: How,
}

impl Origin {
    /// `spec.images`.
    pub fn spec_images() -> Origin {
        Origin { place: Place::SpecImages, how: How::PodSpec }
    }

    /// The control plane of `version`.
    pub fn control_plane(version: &str) -> Origin {
        Origin { place: Place::ControlPlane { version: version.into() }, how: How::PodSpec }
    }

    /// Whether this is the control plane's list.
    pub fn is_control_plane(&self) -> bool {
        matches!(self.place, Place::ControlPlane { .. })
    }

    /// For tables and the installer's `foundIn`.
    pub fn describe(&self) -> String {
        let place = match &self.place {
            Place::SpecImages => "spec.images".to_string(),
            Place::Manifest { file, line, object } => format!("{file}:{line} ({object})"),
            Place::Kustomized { dir, object } => format!("{dir} rendered by kustomize ({object})"),
            Place::Chart { chart, release, namespace, template, object, values } => {
                let template = template.as_deref().map(|t| format!(" {t}")).unwrap_or_default();
                let values = if values.is_empty() { String::new() } else { format!("; values {}", values.join(", ")) };
                format!("chart {chart} (release {release} in {namespace}){template} ({object}){values}")
            }
            Place::ChartValues { chart, path } => format!("chart {chart} values.yaml {path}"),
            Place::ChartAnnotation { chart } => format!("chart {chart} Chart.yaml"),
            Place::ControlPlane { version } => format!("kubernetes {version} control plane"),
        };
        match &self.how {
            How::PodSpec => place,
            How::OutsidePodSpec { field } => format!("{place} at {field}, outside a pod spec"),
            How::Guessed => format!("{place}, guessed without helm"),
        }
    }

    /// For `ferry images --json`.
    pub fn to_json(&self) -> Value {
        let how = match &self.how {
            How::PodSpec => json!({"how": "podSpec"}),
            How::OutsidePodSpec { field } => json!({"how": "outsidePodSpec", "field": field}),
            How::Guessed => json!({"how": "guessed"}),
        };
        let mut v = match &self.place {
            Place::SpecImages => json!({"kind": "specImages"}),
            Place::Manifest { file, line, object } => {
                json!({"kind": "manifest", "file": file, "line": line, "object": object})
            }
            Place::Kustomized { dir, object } => json!({"kind": "kustomize", "dir": dir, "object": object}),
            Place::Chart { chart, release, namespace, template, object, values } => json!({
                "kind": "chart", "chart": chart, "release": release, "namespace": namespace,
                "template": template, "object": object, "values": values,
            }),
            Place::ChartValues { chart, path } => json!({"kind": "chartValues", "chart": chart, "valuesPath": path}),
            Place::ChartAnnotation { chart } => {
                json!({"kind": "chartAnnotation", "chart": chart, "annotation": "artifacthub.io/images"})
            }
            Place::ControlPlane { version } => json!({"kind": "controlPlane", "kubernetesVersion": version}),
        };
        if let (Some(v), Value::Object(h)) = (v.as_object_mut(), how) {
            v.extend(h);
        }
        v.as_object_mut().map(|m| m.insert("text".into(), Value::String(self.describe())));
        v
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Which part of `ferry images` an image belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// Named in a pod spec or listed: what the apps run.
    Apps,
    /// Named only outside pod specs.
    OutsidePodSpec,
    /// Only the control plane's.
    ControlPlane,
}

impl Section {
    /// Of an image with these origins. A control-plane image that `spec.images` also lists (to
    /// give it a local source, say) stays the control plane's.
    pub fn of(origins: &[Origin]) -> Section {
        let control_plane = origins.iter().any(Origin::is_control_plane);
        let apps: Vec<&Origin> = origins
            .iter()
            .filter(|o| !(o.is_control_plane() || (control_plane && o.place == Place::SpecImages)))
            .collect();
        if apps.is_empty() {
            Section::ControlPlane
        } else if apps.iter().all(|o| matches!(o.how, How::OutsidePodSpec { .. })) {
            Section::OutsidePodSpec
        } else {
            Section::Apps
        }
    }

    /// The section's key in JSON.
    pub fn key(self) -> &'static str {
        match self {
            Section::Apps => "apps",
            Section::OutsidePodSpec => "outsidePodSpec",
            Section::ControlPlane => "controlPlane",
        }
    }
}

/// Whether every origin other than the control plane is a guess (and there is one).
pub fn all_guessed(origins: &[Origin]) -> bool {
    let mut apps = origins.iter().filter(|o| !o.is_control_plane()).peekable();
    apps.peek().is_some() && apps.all(|o| o.how == How::Guessed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_guesses() {
        let cp = Origin::control_plane("v1.37.2");
        let guess =
            Origin { place: Place::ChartValues { chart: "web".into(), path: "image".into() }, how: How::Guessed };
        let outside = Origin {
            place: Place::Manifest { file: "bundle/a.yaml".into(), line: 9, object: "Deployment op".into() },
            how: How::OutsidePodSpec { field: "spec.template.spec.containers[0].args[1]".into() },
        };
        assert_eq!(Section::of(std::slice::from_ref(&cp)), Section::ControlPlane);
        assert_eq!(Section::of(&[cp.clone(), outside.clone()]), Section::OutsidePodSpec);
        assert_eq!(Section::of(&[outside.clone(), guess.clone()]), Section::Apps);
        assert_eq!(Section::of(&[Origin::spec_images(), cp.clone()]), Section::ControlPlane);
        assert_eq!(Section::of(&[Origin::spec_images()]), Section::Apps);
        assert!(all_guessed(&[cp.clone(), guess.clone()]));
        assert!(!all_guessed(&[guess.clone(), Origin::spec_images()]));
        assert!(!all_guessed(&[cp]));
        assert_eq!(
            outside.describe(),
            "bundle/a.yaml:9 (Deployment op) at spec.template.spec.containers[0].args[1], outside a pod spec"
        );
        assert_eq!(guess.describe(), "chart web values.yaml image, guessed without helm");
        assert_eq!(guess.to_json()["how"], "guessed");
    }
}
