//! Whether the cluster's workloads (Deployments, StatefulSets, DaemonSets) are Available.
//!
//! Every workload in the cluster counts, wherever it came from: a launch step's manifest, a Helm
//! chart's release, or something the site added. A launch step need not name its namespace for
//! its workloads to be judged. CoreDNS and kube-proxy have rows of their own and are skipped here.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};

/// One judged workload: `(object, available, detail)`, `object` as `kind ns/name`.
pub type Judgement = (String, bool, String);

fn object(kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!("{kind} {}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or("?"))
}

/// Whether the workload is one `check` has its own rows for.
fn covered_elsewhere(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.namespace.as_deref() == Some("kube-system")
        && matches!(meta.name.as_deref(), Some("coredns") | Some("kube-proxy"))
}

/// `want` of `have` ready, with the controller's own word when it has one.
fn counted(have: i32, want: i32, what: &str, reason: Option<String>) -> (bool, String) {
    if have >= want {
        (true, format!("{have}/{want} {what}"))
    } else {
        let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
        (false, format!("{have}/{want} {what}{why}"))
    }
}

/// A Deployment is Available when every desired replica is available and updated.
pub fn deployment(d: &Deployment) -> Option<Judgement> {
    if covered_elsewhere(&d.metadata) {
        return None;
    }
    let want = d.spec.replicas.unwrap_or(1);
    let st = d.status.as_ref();
    let have = st.and_then(|s| s.available_replicas).unwrap_or(0).min(st.and_then(|s| s.updated_replicas).unwrap_or(0));
    let reason = st.and_then(|s| s.conditions.as_ref()).and_then(|cs| {
        cs.iter()
            .find(|c| {
                matches!(c.type_.as_deref(), Some("Available" | "Progressing" | "ReplicaFailure"))
                    && c.status.as_deref() != Some("True")
            })
            .map(|c| c.message.clone().unwrap_or_else(|| c.reason.clone().unwrap_or_default()))
    });
    let (ok, detail) = counted(have, want, "replicas available", reason);
    Some((object("deployment", &d.metadata), ok, detail))
}

/// A StatefulSet is Available when every desired replica is ready.
pub fn stateful_set(s: &StatefulSet) -> Option<Judgement> {
    if covered_elsewhere(&s.metadata) {
        return None;
    }
    let want = s.spec.replicas.unwrap_or(1);
    let have = s.status.as_ref().and_then(|s| s.available_replicas.or(s.ready_replicas)).unwrap_or(0);
    let (ok, detail) = counted(have, want, "replicas available", None);
    Some((object("statefulset", &s.metadata), ok, detail))
}

/// A DaemonSet is Available when it runs, available, on every node it is meant for.
pub fn daemon_set(d: &DaemonSet) -> Option<Judgement> {
    if covered_elsewhere(&d.metadata) {
        return None;
    }
    let st = d.status.as_ref();
    let want = st.map(|s| s.desired_number_scheduled).unwrap_or(0);
    let have = st.and_then(|s| s.number_available).unwrap_or(0);
    let (ok, detail) = counted(have, want, "nodes available", None);
    Some((object("daemonset", &d.metadata), ok, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(j: &str) -> T {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn deployment_short_of_replicas_is_red_with_the_controllers_reason() {
        let d: Deployment = parse(
            r#"{"metadata":{"name":"web","namespace":"demo"},"spec":{"replicas":2,"selector":{},"template":{}},
                "status":{"availableReplicas":1,"updatedReplicas":2,"conditions":[
                  {"type":"Available","status":"False","reason":"MinimumReplicasUnavailable","message":"Deployment does not have minimum availability."}]}}"#,
        );
        let (obj, ok, detail) = deployment(&d).unwrap();
        assert_eq!(obj, "deployment demo/web");
        assert!(!ok);
        assert!(detail.starts_with("1/2 replicas available: Deployment does not have"), "{detail}");
    }

    #[test]
    fn available_workloads_are_green_and_system_ones_skipped() {
        let d: Deployment = parse(
            r#"{"metadata":{"name":"web"},"spec":{"replicas":2,"selector":{},"template":{}},"status":{"availableReplicas":2,"updatedReplicas":2}}"#,
        );
        assert_eq!(deployment(&d).unwrap(), ("deployment default/web".into(), true, "2/2 replicas available".into()));
        let dns: Deployment =
            parse(r#"{"metadata":{"name":"coredns","namespace":"kube-system"},"spec":{"selector":{},"template":{}}}"#);
        assert!(deployment(&dns).is_none());
        let ds: DaemonSet = parse(
            r#"{"metadata":{"name":"kube-flannel-ds","namespace":"kube-flannel"},"spec":{"selector":{},"template":{}},"status":{"desiredNumberScheduled":3,"numberAvailable":2,"currentNumberScheduled":3,"numberMisscheduled":0,"numberReady":2}}"#,
        );
        assert!(!daemon_set(&ds).unwrap().1);
        let ss: StatefulSet = parse(
            r#"{"metadata":{"name":"db","namespace":"x"},"spec":{"replicas":1,"selector":{},"serviceName":"db","template":{}},"status":{"replicas":1,"readyReplicas":1,"availableReplicas":1}}"#,
        );
        assert!(stateful_set(&ss).unwrap().1);
    }
}
