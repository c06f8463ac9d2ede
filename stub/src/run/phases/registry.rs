//! Phase registry: `agent registry-service` on every registry replica (every master unless
//! `--registry-replicas` says otherwise), then `agent check-pull` on every node. The phase ends
//! only when each node gets a bundled image's manifest from every replica and its containerd
//! pulls the image through hosts.toml (which lists all replicas, so a pull survives one's death).
//!
//! The registry serves TLS only, with a certificate for every replica's address signed by the
//! cluster CA (`registry::pki`, from the operator's local state; the CA key stays there), and
//! answers only requests carrying the cluster's pull credential. The certificate and key reach
//! the replicas on the agent's stdin; the proof asks each replica with the CA and credential.
//!
//! Owns the choice of the probe image and the proof; it is never skipped, as the proof is cheap
//! and the replicas may have changed.

use crate::cluster::Role;
use crate::protocol::Call;
use crate::protocol::access::{PullAccess, ServingMaterial};
use crate::protocol::call::CHECK_PULL_TIMEOUT;
use crate::run::engine::{BoxFuture, Decision, Engine, Outcome, Phase};
use crate::run::records::State;
use crate::run::{Ctx, INSTALLER_PATH, probe_image, registry_endpoints, registry_names};
use crate::ssh::RemoteHost;
use anyhow::{Context, Result};
use std::sync::Arc;

/// The registry service on every replica.
pub struct Service {
    material: ServingMaterial,
}

impl Service {
    /// The service with a certificate covering `ctx`'s replicas, issued (or reused) once for all.
    pub fn new(ctx: &Ctx) -> Result<Service> {
        let material = ctx.registry_ca()?.serving(&registry_names(&ctx.cluster)).with_context(|| {
            format!("issuing the registry's certificate from the CA in {}", ctx.local_state.display())
        })?;
        Ok(Service { material })
    }
}

impl<H: RemoteHost> Phase<H> for Service {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn should_run(&self, ctx: &Ctx, i: usize, _state: &State) -> Decision {
        if ctx.cluster.hosts[i].is(Role::Registry) { Decision::Run } else { Decision::Pass }
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let host = &ctx.cluster.hosts[i];
            ctx.rep.event(&host.ip, "registry", "start", "starting ferry-registry.service", serde_json::json!({}));
            let call = Call::RegistryService { port: ctx.cluster.registry_port, allow_unsigned: ctx.allow_unsigned };
            crate::ssh::agent::run(h.as_ref(), INSTALLER_PATH, &call, &self.material).await?;
            Ok(Outcome::Quiet)
        })
    }
}

/// Every node resolves the probe image through every replica (so any of them can take over),
/// and containerd pulls it through its hosts.toml.
pub struct Pull {
    image: Option<String>,
    replicas: Vec<String>,
    access: PullAccess,
}

impl Pull {
    /// The proof for `ctx`'s bundle and cluster.
    pub fn new(ctx: &Ctx) -> Result<Pull> {
        let access = ctx.registry_ca()?.access();
        Ok(Pull { image: probe_image(&ctx.payload), replicas: registry_endpoints(&ctx.cluster), access })
    }
}

impl<H: RemoteHost> Phase<H> for Pull {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let no_image = self.image.is_none();
            engine.each(self, engine.must_run(&todo), engine.parallel).await?;
            if no_image {
                engine.ctx.rep.line(
                    "warning",
                    "warning: the bundle carries no images, so the registry could not be checked through containerd",
                    serde_json::json!({}),
                );
            }
            Ok(())
        })
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let host = &ctx.cluster.hosts[i];
            if let Some(image) = &self.image {
                ctx.rep.event(
                    &host.ip,
                    "registry",
                    "progress",
                    &format!("containerd pulls {image} through the mirror ({} replicas)", self.replicas.len()),
                    serde_json::json!({"replicas": self.replicas}),
                );
                let call = Call::CheckPull {
                    image: image.clone(),
                    endpoints: self.replicas.clone(),
                    timeout: CHECK_PULL_TIMEOUT,
                };
                crate::ssh::agent::run(h.as_ref(), INSTALLER_PATH, &call, &self.access).await?;
            }
            Ok(Outcome::recorded(serde_json::json!({"image": self.image, "replicas": self.replicas})))
        })
    }
}
