//! One integration-test binary; each module covers one area.
mod build_verify;
mod images;
mod registry;
mod lab;
mod run;
mod cluster;
mod lb;
mod fetch_script;
