//! Kubernetes control-plane material ferry generates itself, before and for kubeadm: its
//! configuration and its secrets. Nothing here touches a host: callers (`run`, `join`) put the
//! results where they belong.
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the v1beta4 Init/Cluster/Join configurations and the KubeletConfiguration, `spec.kubeadm` fragments (schema, validation, deep merge), and their errors |
//! | [`secrets`] | the bootstrap token, the certificate key, and the discovery CA hash from a CA certificate, and their errors |
//! | [`yaml`] | a small deterministic YAML emitter (fixed key order, safe quoting) for the configs |

pub mod config;
pub mod secrets;
pub mod yaml;
