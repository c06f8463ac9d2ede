//! One integration-test binary; each module covers one area.
mod build_kubernetes_script;
mod build_verify;
mod charts;
mod fetch_script;
mod hardening;
mod images;
mod kubeadm_real;
mod lab;
mod lb;
mod lock;
mod real_bundle;
mod real_cluster;
mod real_kubelet;
mod registry;
mod relay;
mod run;
mod standin_cluster;
