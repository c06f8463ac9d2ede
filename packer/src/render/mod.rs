//! Turns inputs that are not plain manifests into what the cluster will see, at build time:
//! charts rendered by helm ([`helm`], reading charts through [`chart`]) and kustomizations
//! rendered by kustomize or kubectl ([`kustomize`]).

pub mod chart;
pub mod helm;
pub mod kustomize;
