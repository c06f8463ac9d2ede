//! Phase registry: `agent registry-service` on every registry replica (every master unless
//! `--registry-replicas` says otherwise), then `agent check-pull` on every node. The phase ends
//! only when each node gets a bundled image's manifest from every replica and its containerd
//! pulls the image through hosts.toml (which lists all replicas, so a pull survives one's death).
//!
//! Owns the choice of the probe image and the proof; it is never skipped, as the proof is cheap
//! and the replicas may have changed.

use crate::cluster::Role;
use crate::protocol::Call;
use crate::protocol::call::CHECK_PULL_TIMEOUT;
use crate::run::engine::{BoxFuture, Decision, Engine, Outcome, Phase};
use crate::run::records::State;
use crate::run::{Ctx, INSTALLER_PATH, probe_image, registry_endpoints};
use crate::ssh::RemoteHost;
use anyhow::Result;
use std::sync::Arc;

/// The registry service on every replica.
pub struct Service;

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
            crate::ssh::agent::run(h.as_ref(), INSTALLER_PATH, &call).await?;
            Ok(Outcome::Quiet)
        })
    }
}

/// Every node resolves the probe image through every replica (so any of them can take over),
/// and containerd pulls it through its hosts.toml.
pub struct Pull {
    image: Option<String>,
    replicas: Vec<String>,
}

impl Pull {
    /// The proof for `ctx`'s bundle and cluster.
    pub fn new(ctx: &Ctx) -> Pull {
        Pull { image: probe_image(&ctx.payload), replicas: registry_endpoints(&ctx.cluster) }
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
                crate::ssh::agent::run(h.as_ref(), INSTALLER_PATH, &call).await?;
            }
            Ok(Outcome::recorded(serde_json::json!({"image": self.image, "replicas": self.replicas})))
        })
    }
}
