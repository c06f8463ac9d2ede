//! Turns inputs that are not plain manifests into what the cluster will see, at build time.

pub mod kustomize;
