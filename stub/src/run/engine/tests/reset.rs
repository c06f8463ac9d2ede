//! `reset`'s sequence against in-memory hosts: who leaves through whom, workers before masters,
//! what a failure stops, and that nothing is recorded.

use super::*;
use crate::run::deliver;
use crate::run::phases::reset::{Going, Tally, Teardown, Torn};
use std::collections::BTreeSet;

const MASTER: &str = "10.0.0.1";
const WORKERS: [&str; 2] = ["10.0.0.2", "10.0.0.3"];

fn going(hosts: &[&str]) -> Going {
    let hosts: BTreeSet<String> = hosts.iter().map(|s| s.to_string()).collect();
    Going { whole: hosts.len() == IPS.len(), hosts, known: true }
}

fn unrecorded(ctx: &Arc<Ctx>, world: &Arc<World>) -> Engine<FakeHost> {
    Engine::unrecorded(ctx.clone(), IPS.iter().map(|ip| world.host(ip)).collect(), 2)
}

/// Whether `ip` ran the teardown script.
fn torn_down(world: &World, ip: &str) -> bool {
    world.commands(ip).iter().any(|c| c.contains("kubeadm reset -f"))
}

#[tokio::test]
async fn a_whole_reset_tears_every_host_down_and_forgets_the_cluster_recording_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    std::fs::create_dir_all(&ctx.local_state).unwrap();
    std::fs::write(ctx.local_state.join("cluster.yaml"), "saved").unwrap();
    deliver::reset(&unrecorded(&ctx, &world), going(&IPS)).await.unwrap();
    for ip in IPS {
        assert!(torn_down(&world, ip), "{ip}");
        assert!(!world.commands(ip).iter().any(|c| c.contains("kubectl")), "{ip}: nobody stays to drain through");
        assert!(world.calls(ip).is_empty(), "{ip}: no agent call, no record");
    }
    assert!(!ctx.local_state.exists(), "the saved description goes with the cluster");
}

#[tokio::test]
async fn a_failed_worker_stops_the_reset_before_any_master_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    std::fs::create_dir_all(&ctx.local_state).unwrap();
    world.fail(WORKERS[0], "kubeadm reset -f", "kubeadm reset -f failed: etcd member still listed");
    let err = format!("{:#}", deliver::reset(&unrecorded(&ctx, &world), going(&IPS)).await.unwrap_err());
    assert!(err.contains("reset failed on 1 host(s); every step tolerates what is already done"), "{err}");
    assert!(err.contains("10.0.0.2: reset failed: kubeadm reset -f failed: etcd member still listed"), "{err}");
    assert!(torn_down(&world, WORKERS[1]), "the other worker finishes its teardown");
    assert!(!torn_down(&world, MASTER), "the control plane stays while a worker could not leave");
    assert!(ctx.local_state.exists(), "the cluster is not forgotten while hosts remain");
    assert_eq!(std::fs::read_dir(&ctx.local_state).unwrap().count(), 0, "no failure record is written");
    // Healed, the same reset finishes.
    world.heal();
    deliver::reset(&unrecorded(&ctx, &world), going(&IPS)).await.unwrap();
    assert!(torn_down(&world, MASTER));
}

#[tokio::test]
async fn resetting_one_worker_drains_it_through_the_master_and_the_description_forgets_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    deliver::reset(&unrecorded(&ctx, &world), going(&[WORKERS[1]])).await.unwrap();
    assert!(torn_down(&world, WORKERS[1]));
    assert!(!torn_down(&world, MASTER) && !torn_down(&world, WORKERS[0]), "the others stay");
    assert!(world.commands(WORKERS[0]).is_empty(), "a host that stays and leads nothing is not touched");
    let on_master = world.commands(MASTER);
    assert!(on_master[0].contains("kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes"), "{on_master:?}");
    assert!(on_master.iter().any(|c| c.contains(crate::node::CLUSTER_FILE)), "{on_master:?}");
    let saved = std::fs::read_to_string(ctx.local_state.join("cluster.yaml")).unwrap();
    assert!(saved.contains(WORKERS[0]) && !saved.contains(WORKERS[1]), "{saved}");
}

#[tokio::test]
async fn a_host_ferry_never_installed_is_left_alone_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let never: crate::ssh::fake::Responder = Arc::new(|_cmd: &str, _stdin: &[u8]| Output {
        stdout: b"ferry-reset: nothing to do: ferry never installed this host\n".to_vec(),
        ..Output::default()
    });
    let hosts = IPS.iter().map(|ip| Arc::new(FakeHost::new(ip, never.clone()))).collect();
    let engine = Engine::unrecorded(ctx.clone(), hosts, 2);
    let tally = Tally::default();
    let [workers, _] = Teardown::workers_then_masters(&ctx, Arc::new(going(&[WORKERS[0]])), tally.clone());
    engine.run(&[Arc::new(workers) as Step<FakeHost>]).await.unwrap();
    let tally = tally.lock().unwrap().clone();
    assert_eq!(tally.into_iter().collect::<Vec<_>>(), [(WORKERS[0].to_string(), Torn::NeverInstalled)]);
    assert_eq!(Torn::NeverInstalled.words(), "nothing to do (note: ferry never installed this host)");
}

#[tokio::test]
async fn the_teardown_is_given_what_the_installer_laid_down() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    deliver::reset(&unrecorded(&ctx, &world), going(&[WORKERS[0]])).await.unwrap();
    let seen = world.seen.lock().unwrap();
    let script =
        seen[WORKERS[0]].iter().find(|s| matches!(&s.ran, Ran::Command(c) if c.contains("kubeadm reset"))).unwrap();
    let expected: Vec<String> = ctx
        .payload
        .index()
        .entries
        .iter()
        .filter_map(|e| e.path.strip_prefix("rootfs/").map(|p| format!("/{p}")))
        .collect();
    assert!(!expected.is_empty(), "the test installer has a rootfs");
    assert_eq!(script.stdin.lines().collect::<Vec<_>>(), expected);
}

fn reset_options() -> crate::reset::Options {
    crate::reset::Options { json: false, quiet: true, no_progress: true, parallel: 2, force_unlock: false }
}

/// The locks of a reset: the hosts going and the master that speaks for the cluster, nobody
/// else; a host another operation holds stops it before anything changes.
#[tokio::test]
async fn a_reset_locks_the_hosts_it_changes_and_stops_on_one_held() {
    use crate::protocol::lock::tests::holder;
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    let engine = unrecorded(&ctx, &world);
    let locks = crate::reset::lock_hosts(&engine, &going(&[WORKERS[1]]), &reset_options()).await.unwrap();
    assert_eq!(locks.hosts(), [MASTER, WORKERS[1]]);
    locks.release(&ctx.rep).await;
    let locked = |ip| world.calls(ip).iter().filter(|(c, _, _)| matches!(c, Call::Lock { .. })).count();
    assert_eq!((locked(MASTER), locked(WORKERS[0]), locked(WORKERS[1])), (1, 0, 1));

    world.held_by.lock().unwrap().insert(MASTER.into(), holder());
    let err = crate::reset::lock_hosts(&engine, &going(&[WORKERS[1]]), &reset_options()).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "10.0.0.1 is locked by `run` of cluster lab, started 2026-12-06 12:03:01 UTC by root@build1 pid 4242; \
         wait for it, or if it is gone use --force-unlock; nothing was reset"
    );
    assert!(!torn_down(&world, WORKERS[1]));
}

/// A host whose agent cannot lock (none installed, or one from before the lock) is reset
/// anyway: a teardown must work on half-made hosts.
#[tokio::test]
async fn a_host_that_cannot_be_locked_is_reset_without_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    world.fail_call(WORKERS[0], "lock", "sh: /var/lib/ferry/agent: not found");
    let engine = unrecorded(&ctx, &world);
    let locks = crate::reset::lock_hosts(&engine, &going(&IPS), &reset_options()).await.unwrap();
    assert_eq!(locks.hosts(), [MASTER, WORKERS[1]]);
    locks.release(&ctx.rep).await;
}
