//! The engine against in-memory hosts: order, resume, failure.

use super::*;
use crate::agent::Record;
use crate::protocol::{Call, PreparePlan, PrepareReport, decode};
use crate::run::phases::prepare::Prepare;
use crate::run::progress::Reporter;
use crate::ssh::Output;
use crate::ssh::fake::{AgentResponder, FakeHost, agent_answer};
use payload_format::Payload;
use std::path::Path;

const IPS: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];

/// What a fake host ran: a shell command, or a typed call of ferry's agent.
#[derive(Clone, Debug, PartialEq)]
enum Ran {
    Command(String),
    Call(Call),
}

/// What fails on a host: shell commands containing a fragment, or agent calls of one kind
/// (named as [`Call::name`]).
enum Target {
    Command(String),
    Call(&'static str),
}

/// One thing a fake host ran: what, with which stdin, and the exit status it answered.
struct Seen {
    ran: Ran,
    stdin: String,
    status: u32,
}

/// What the fake hosts saw, and how their agents (of this build) answer.
#[derive(Default)]
struct World {
    /// Per host, in order.
    seen: Mutex<BTreeMap<String, Vec<Seen>>>,
    /// (host, target, stderr): that fails there, with that stderr.
    failures: Mutex<Vec<(String, Target, String)>>,
    /// What `agent prepare` answers.
    prepare_report: Mutex<PrepareReport>,
    /// Hosts another operation holds, and who.
    held_by: Mutex<BTreeMap<String, crate::protocol::lock::Holder>>,
}

impl World {
    fn host(self: &Arc<Self>, ip: &str) -> Arc<FakeHost> {
        Arc::new(FakeHost::new(ip, self.responder(ip)).with_agent(self.agent(ip)))
    }

    /// The stderr `ran` fails with on `ip`, when it is told to fail there.
    fn failure(&self, ip: &str, ran: &Ran) -> Option<String> {
        let failures = self.failures.lock().unwrap();
        let mut mine = failures.iter().filter(|(h, _, _)| h == ip);
        mine.find_map(|(_, target, err)| match (target, ran) {
            (Target::Command(fragment), Ran::Command(cmd)) if cmd.contains(fragment.as_str()) => Some(err.clone()),
            (Target::Call(name), Ran::Call(call)) if call.name() == *name => Some(err.clone()),
            _ => None,
        })
    }

    /// Logs `ran` on `ip` with its stdin and the answer it got; returns the answer.
    fn saw(&self, ip: &str, ran: Ran, stdin: &[u8], out: Output) -> Output {
        let seen = Seen { ran, stdin: String::from_utf8_lossy(stdin).into(), status: out.status };
        self.seen.lock().unwrap().entry(ip.into()).or_default().push(seen);
        out
    }

    /// Answers shell commands as host `ip` of this world: logs them, fails them when told to.
    fn responder(self: &Arc<Self>, ip: &str) -> crate::ssh::fake::Responder {
        let (world, ip) = (self.clone(), ip.to_string());
        Arc::new(move |cmd: &str, stdin: &[u8]| {
            let ran = Ran::Command(cmd.into());
            let out = match world.failure(&ip, &ran) {
                Some(err) => Output { status: 1, stdout: Vec::new(), stderr: err.into_bytes() },
                None => Output::default(),
            };
            world.saw(&ip, ran, stdin, out)
        })
    }

    /// Answers agent calls as the agent of this build on host `ip` would: its hello, then the
    /// call's typed answer. A failure (told to fail, or stdin that does not read as the call's
    /// input) is its hello, then a non-zero status with the cause on stderr.
    fn agent(self: &Arc<Self>, ip: &str) -> AgentResponder {
        let (world, ip) = (self.clone(), ip.to_string());
        Arc::new(move |call: &Call, stdin: &[u8]| {
            let ran = Ran::Call(call.clone());
            let out = match world.failure(&ip, &ran) {
                Some(err) => agent_failed(&err),
                None => world.answer(&ip, call, stdin),
            };
            world.saw(&ip, ran, stdin, out)
        })
    }

    /// What the agent on `ip` answers `call` (with `stdin`) when nothing fails it.
    fn answer(&self, ip: &str, call: &Call, stdin: &[u8]) -> Output {
        match call {
            Call::Facts { tools } => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
                let time_ms = now.as_millis() as u64;
                agent_answer(Some(&crate::agent::Facts { time_ms, tools_missing: tools.clone(), ..Default::default() }))
            }
            Call::State { cluster } => {
                let mut state = self.state(ip);
                state.retain(|_, r| r.cluster == *cluster);
                agent_answer(Some(&state))
            }
            Call::Prepare => match decode::<PreparePlan>("the prepare plan", stdin) {
                Ok(_) => agent_answer(Some(&*self.prepare_report.lock().unwrap())),
                Err(e) => agent_failed(&format!("{e:#}")),
            },
            Call::Record { .. } => match decode::<serde_json::Value>("the record's detail", stdin) {
                Ok(_) => agent_answer::<()>(None),
                Err(e) => agent_failed(&format!("{e:#}")),
            },
            Call::RegistryService { .. } | Call::CheckPull { .. } | Call::ApiReady { .. } => agent_answer::<()>(None),
            Call::Receive { .. } => agent_failed("this test world streams no installer"),
            Call::Lock { .. } => agent_answer(Some(&match self.held_by.lock().unwrap().get(ip) {
                Some(holder) => crate::protocol::lock::LockAnswer::Refused { holder: holder.clone() },
                None => crate::protocol::lock::LockAnswer::Acquired,
            })),
        }
    }

    /// Shell commands containing `cmd` fail on `ip` with `stderr`.
    fn fail(&self, ip: &str, cmd: &str, stderr: &str) {
        self.failures.lock().unwrap().push((ip.into(), Target::Command(cmd.into()), stderr.into()));
    }

    /// Agent calls named `call` (as [`Call::name`]) fail on `ip` with `stderr`.
    fn fail_call(&self, ip: &str, call: &'static str, stderr: &str) {
        self.failures.lock().unwrap().push((ip.into(), Target::Call(call), stderr.into()));
    }

    fn heal(&self) {
        self.failures.lock().unwrap().clear();
    }

    /// Everything `ip` ran (shell commands and agent calls), in order.
    fn log(&self, ip: &str) -> Vec<Ran> {
        self.seen.lock().unwrap().get(ip).map(|s| s.iter().map(|s| s.ran.clone()).collect()).unwrap_or_default()
    }

    /// The shell commands `ip` ran (not its agent calls), without their stdin.
    fn commands(&self, ip: &str) -> Vec<String> {
        self.log(ip).into_iter().filter_map(|r| if let Ran::Command(c) = r { Some(c) } else { None }).collect()
    }

    /// The agent calls `ip` answered, with their stdin and exit status.
    fn calls(&self, ip: &str) -> Vec<(Call, String, u32)> {
        let seen = self.seen.lock().unwrap();
        let seen = seen.get(ip).into_iter().flatten();
        seen.filter_map(|s| match &s.ran {
            Ran::Call(c) => Some((c.clone(), s.stdin.clone(), s.status)),
            Ran::Command(_) => None,
        })
        .collect()
    }

    /// The phases recorded on `ip` (the `record` calls its agent took), as a later preflight
    /// reads them.
    fn state(&self, ip: &str) -> State {
        let mut state = State::new();
        for (call, stdin, status) in self.calls(ip) {
            let Call::Record { cluster, phase, installer } = call else { continue };
            if status != 0 {
                continue;
            }
            let detail = serde_json::from_str(&stdin).unwrap_or_default();
            state.insert(phase.clone(), Record { cluster, phase, installer, completed: 0, detail });
        }
        state
    }
}

/// What the agent of this build prints when a call fails: its hello, then the cause on stderr.
fn agent_failed(err: &str) -> Output {
    Output { status: 1, stderr: format!("{err}\n").into_bytes(), ..agent_answer::<()>(None) }
}

fn ctx(dir: &Path) -> Arc<Ctx> {
    let path = crate::run::distribute::tests::build_sized(dir, 2_000, 1_000);
    let cluster = crate::cluster::resolve(
        None,
        &crate::cluster::Overrides { hosts: IPS.iter().map(|s| s.to_string()).collect(), ..Default::default() },
    )
    .unwrap();
    Arc::new(Ctx {
        payload: Payload::open(&path).unwrap(),
        id: "build-1".into(),
        cluster,
        rep: Reporter::new(false, true, true),
        stub: b"\x7fELF pretend stub".to_vec(),
        stub_sha: String::new(),
        allow_unsigned: true,
        signer: None,
        local_state: dir.join("state"),
        phase_timeout: Duration::from_secs(60),
        force: false,
        stall: Duration::from_secs(20),
        // Beside the state directory, whose files the tests count.
        registry_ca: Some(crate::run::registry_ca(&dir.join("pki")).unwrap()),
    })
}

fn engine(ctx: &Arc<Ctx>, world: &Arc<World>, states: Vec<State>) -> Engine<FakeHost> {
    let hosts = IPS.iter().map(|ip| world.host(ip)).collect();
    Engine::new(ctx.clone(), hosts, states, 2)
}

/// A phase that runs `do NAME` on every host not recorded done by this build.
struct Work {
    name: &'static str,
    one_by_one: bool,
}

fn work(name: &'static str) -> Step<FakeHost> {
    Arc::new(Work { name, one_by_one: false })
}

impl Phase<FakeHost> for Work {
    fn name(&self) -> &'static str {
        self.name
    }

    fn should_run(&self, ctx: &Ctx, _i: usize, state: &State) -> Decision {
        if records::done(state, self.name, &ctx.id) { Decision::Skip("already done") } else { Decision::Run }
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<FakeHost>, todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            engine.say_skips(self.name, &todo);
            let which = engine.must_run(&todo);
            if self.one_by_one { engine.one_by_one(self, which).await } else { engine.each(self, which, 2).await }
        })
    }

    fn run_host(self: Arc<Self>, _ctx: Arc<Ctx>, h: Arc<FakeHost>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            crate::run::checked(h.as_ref(), &format!("do {}", self.name), b"", self.name).await?;
            Ok(Outcome::recorded(serde_json::json!({"host": i})))
        })
    }
}

fn did(world: &World, ip: &str) -> Vec<String> {
    world.commands(ip).into_iter().filter(|c| c.starts_with("do ")).collect()
}

fn local(ctx: &Ctx, ip: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ctx.local_state.join(format!("{ip}.json"))).unwrap()).unwrap()
}

#[tokio::test]
async fn phases_run_in_order_on_every_host_and_are_recorded_in_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    let e = engine(&ctx, &world, vec![State::new(); 3]);
    e.run(&[work("a"), work("b"), work("c")]).await.unwrap();
    for ip in IPS {
        assert_eq!(did(&world, ip), ["do a", "do b", "do c"], "{ip}");
        let log = world.log(ip);
        let record_b =
            log.iter().position(|r| matches!(r, Ran::Call(Call::Record { phase, .. }) if phase == "b")).unwrap();
        let do_c = log.iter().position(|r| *r == Ran::Command("do c".into())).unwrap();
        assert!(record_b < do_c, "b is recorded before c starts on {ip}: {log:?}");
        let state = world.state(ip);
        assert_eq!(state.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(state.values().all(|r| r.installer == "build-1" && r.cluster == ctx.cluster.name), "{state:?}");
        let rec = local(&ctx, ip);
        assert_eq!(rec["host"], ip);
        assert_eq!(rec["installer"], "build-1");
        for p in ["a", "b", "c"] {
            assert_eq!(rec["phases"][p]["status"], "done", "{ip} {p}");
        }
    }
}

#[tokio::test]
async fn a_failure_names_host_phase_and_cause_and_no_host_gets_a_later_phase() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    world.fail("10.0.0.2", "do b", "disk on fire");
    let e = engine(&ctx, &world, vec![State::new(); 3]);
    let err = format!("{:#}", e.run(&[work("a"), work("b"), work("c")]).await.unwrap_err());
    assert!(err.contains("b failed on 1 host(s)"), "{err}");
    assert!(err.contains("10.0.0.2: b failed: b exited with status 1: disk on fire"), "{err}");
    // The others finish the phase that failed; nobody starts the next.
    assert_eq!(did(&world, "10.0.0.1"), ["do a", "do b"]);
    assert_eq!(did(&world, "10.0.0.2"), ["do a", "do b"]);
    assert_eq!(did(&world, "10.0.0.3"), ["do a", "do b"]);
    assert!(!world.state("10.0.0.2").contains_key("b"), "a failure is not recorded on the host as done");
    let rec = local(&ctx, "10.0.0.2");
    assert_eq!(rec["phases"]["b"]["status"], "failed");
    assert!(rec["phases"]["b"]["detail"]["error"].as_str().unwrap().contains("disk on fire"));
    assert_eq!(local(&ctx, "10.0.0.1")["phases"]["b"]["status"], "done");
}

#[tokio::test]
async fn a_rerun_after_a_failure_skips_what_is_recorded_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    world.fail("10.0.0.3", "do b", "no space left on device");
    let phases = [work("a"), work("b"), work("c")];
    engine(&ctx, &world, vec![State::new(); 3]).run(&phases).await.unwrap_err();
    world.heal();
    let states: Vec<State> = IPS.iter().map(|ip| world.state(ip)).collect();
    engine(&ctx, &world, states).run(&phases).await.unwrap();
    assert_eq!(did(&world, "10.0.0.1"), ["do a", "do b", "do c"]);
    assert_eq!(did(&world, "10.0.0.3"), ["do a", "do b", "do b", "do c"], "only the failed phase is redone");
    assert_eq!(local(&ctx, "10.0.0.3")["phases"]["b"]["status"], "done");
}

#[tokio::test]
async fn a_record_of_another_build_does_not_count_as_done() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    let states = vec![
        world.state("none"),
        {
            let mut s = State::new();
            let detail = serde_json::json!({});
            s.insert(
                "a".into(),
                Record { cluster: "c".into(), phase: "a".into(), installer: "build-0".into(), completed: 0, detail },
            );
            s
        },
        {
            let mut s = State::new();
            let detail = serde_json::json!({});
            s.insert(
                "a".into(),
                Record { cluster: "c".into(), phase: "a".into(), installer: "build-1".into(), completed: 0, detail },
            );
            s
        },
    ];
    engine(&ctx, &world, states).run(&[work("a")]).await.unwrap();
    assert_eq!(did(&world, "10.0.0.1"), ["do a"]);
    assert_eq!(did(&world, "10.0.0.2"), ["do a"], "recorded by another build: run again");
    assert!(did(&world, "10.0.0.3").is_empty(), "recorded by this build: skipped");
}

#[tokio::test]
async fn one_by_one_stops_at_the_first_failed_host() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    world.fail("10.0.0.2", "do s", "etcd would not take the member");
    let e = engine(&ctx, &world, vec![State::new(); 3]);
    let seq: Step<FakeHost> = Arc::new(Work { name: "s", one_by_one: true });
    let err = format!("{:#}", e.run(&[seq, work("after")]).await.unwrap_err());
    assert_eq!(err, "10.0.0.2: s failed: s exited with status 1: etcd would not take the member");
    assert_eq!(did(&world, "10.0.0.1"), ["do s"]);
    assert_eq!(did(&world, "10.0.0.2"), ["do s"]);
    assert!(did(&world, "10.0.0.3").is_empty(), "the host after the failed one never starts");
    assert_eq!(local(&ctx, "10.0.0.2")["phases"]["s"]["status"], "failed");
}

#[tokio::test]
async fn a_local_record_that_cannot_be_written_fails_the_phase() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    std::fs::write(&ctx.local_state, b"a file where the state directory should be").unwrap();
    let e = engine(&ctx, &world, vec![State::new(); 3]);
    let err = format!("{:#}", e.run(&[work("a"), work("b")]).await.unwrap_err());
    assert!(err.contains("a failed on 3 host(s)"), "{err}");
    assert!(err.contains("recording phase a of 10.0.0.1"), "{err}");
    assert!(err.contains("the failure could not be recorded either"), "{err}");
    assert!(did(&world, "10.0.0.1").iter().all(|c| c != "do b"));
}

/// The agent on a host refuses to record: the phase fails there, naming the agent's cause, and
/// is recorded as failed beside the installer, not as done.
#[tokio::test]
async fn a_record_the_agent_refuses_fails_the_phase_on_that_host() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    let cause = "writing /var/lib/ferry/state: No space left on device";
    world.fail_call("10.0.0.2", "record", cause);
    let e = engine(&ctx, &world, vec![State::new(); 3]);
    let err = format!("{:#}", e.run(&[work("a"), work("b")]).await.unwrap_err());
    assert!(err.contains("a failed on 1 host(s)"), "{err}");
    assert!(err.contains(&format!("10.0.0.2: a failed: recording the phase exited with status 1: {cause}")), "{err}");
    assert!(world.state("10.0.0.2").is_empty());
    assert_eq!(local(&ctx, "10.0.0.2")["phases"]["a"]["status"], "failed");
    assert_eq!(local(&ctx, "10.0.0.1")["phases"]["a"]["status"], "done");
    assert!(IPS.iter().all(|ip| did(&world, ip) == ["do a"]), "nobody starts b");
}

#[tokio::test]
async fn prepare_sends_the_plan_records_the_report_and_is_skipped_once_done() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    *world.prepare_report.lock().unwrap() = PrepareReport { changed: vec![], warnings: vec!["swap was on".into()] };
    let prepare: Step<FakeHost> = Arc::new(Prepare);
    engine(&ctx, &world, vec![State::new(); 3]).run(std::slice::from_ref(&prepare)).await.unwrap();
    let calls = world.calls("10.0.0.2");
    let (_, plan, _) = calls.iter().find(|(c, _, _)| *c == Call::Prepare).unwrap();
    let plan: serde_json::Value = serde_json::from_str(plan).unwrap();
    assert_eq!(plan["node_ip"], "10.0.0.2");
    let state = world.state("10.0.0.2");
    assert_eq!(state["prepare"].detail["warnings"][0], "swap was on");
    assert_eq!(state["prepare"].detail["registry_endpoints"], plan["registry_endpoints"]);

    // Recorded by this build for the same replicas: nothing to do on the next run.
    let before = world.log("10.0.0.2").len();
    let states: Vec<State> = IPS.iter().map(|ip| world.state(ip)).collect();
    engine(&ctx, &world, states.clone()).run(std::slice::from_ref(&prepare)).await.unwrap();
    assert_eq!(world.log("10.0.0.2").len(), before);

    // Prepared for other replicas: hosts.toml must change, so it runs again.
    let mut moved = states;
    moved[1].get_mut("prepare").unwrap().detail["registry_endpoints"] = serde_json::json!(["http://10.9.9.9:5000"]);
    engine(&ctx, &world, moved).run(&[prepare]).await.unwrap();
    assert_eq!(world.calls("10.0.0.2").iter().filter(|(c, _, _)| *c == Call::Prepare).count(), 2);
}

#[tokio::test]
async fn the_registry_secrets_travel_on_stdin_only_and_no_record_keeps_them() {
    use crate::protocol::access::ServingMaterial;
    use crate::run::phases::registry::Service;
    let dir = tempfile::tempdir().unwrap();
    let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
    let ca = ctx.registry_ca().unwrap();
    let password = ca.credential().password.expose().to_string();
    let ca_key = std::fs::read_to_string(dir.path().join("pki").join(crate::registry::pki::CA_KEY)).unwrap();
    let steps: Vec<Step<FakeHost>> = vec![Arc::new(Prepare), Arc::new(Service::new(&ctx).unwrap())];
    engine(&ctx, &world, vec![State::new(); 3]).run(&steps).await.unwrap();

    let calls = world.calls("10.0.0.1");
    let (_, plan, _) = calls.iter().find(|(c, _, _)| *c == Call::Prepare).unwrap();
    let plan: PreparePlan = decode("the plan", plan.as_bytes()).unwrap();
    assert!(plan.registry_endpoints.iter().all(|e| e.starts_with("https://")), "{:?}", plan.registry_endpoints);
    let access = plan.registry_access.expect("every node gets the CA and the credential");
    assert_eq!((access.ca_pem.as_str(), access.credential.password.expose()), (ca.cert_pem(), password.as_str()));
    let (call, material, _) = calls.iter().find(|(c, _, _)| c.name() == "registry-service").unwrap();
    let material: ServingMaterial = decode("the material", material.as_bytes()).unwrap();
    assert_eq!(material.credential_sha256, ca.credential().digest());
    assert!(!serde_json::to_string(&material).unwrap().contains(&password), "registry hosts get only the digest");
    assert!(!serde_json::to_string(&material).unwrap().contains(ca_key.lines().nth(1).unwrap()), "nor the CA key");
    let line = call.command_line("/var/lib/ferry/installer");
    assert!(!line.contains(&password) && !line.contains("PRIVATE KEY"), "{line}");

    // Neither the host's records nor the operator's keep a secret.
    for ip in IPS {
        let kept = format!("{} {}", serde_json::to_string(&world.state(ip)).unwrap(), local(&ctx, ip));
        assert!(!kept.contains(&password) && !kept.contains("PRIVATE KEY"), "{ip}: {kept}");
    }
    // Another CA (the state directory lost): every node is prepared again for it.
    let states: Vec<State> = IPS.iter().map(|ip| world.state(ip)).collect();
    let mut other = Arc::into_inner(ctx).unwrap();
    other.registry_ca = Some(crate::run::registry_ca(&dir.path().join("pki-2")).unwrap());
    let other = Arc::new(other);
    engine(&other, &world, states).run(&[Arc::new(Prepare) as Step<FakeHost>]).await.unwrap();
    assert_eq!(world.calls("10.0.0.1").iter().filter(|(c, _, _)| *c == Call::Prepare).count(), 2);
}

mod kubeadm {
    use super::*;
    use crate::kube::config::{ClusterInputs, Fragments};
    use crate::run::phases::control::{Init, Join, Kubeadm, SaveState};

    const TOKEN: &str = "abcdef.0123456789abcdef";

    /// master0 answers `kubeadm token create` and the CA read as a real one would.
    fn answering(world: &Arc<World>, ip: &str) -> Arc<FakeHost> {
        let inner = world.responder(ip);
        let ca = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/standins/pki/ca.crt")).unwrap();
        let commands = Arc::new(move |cmd: &str, stdin: &[u8]| {
            let seen = inner(cmd, stdin);
            match cmd {
                "kubeadm token create --ttl 24h0m0s" => Output { stdout: format!("{TOKEN}\n").into_bytes(), ..seen },
                "cat /etc/kubernetes/pki/ca.crt" => Output { stdout: ca.clone(), ..seen },
                _ => seen,
            }
        });
        Arc::new(FakeHost::new(ip, commands).with_agent(world.agent(ip)))
    }

    fn phases(ctx: &Ctx) -> Vec<Step<FakeHost>> {
        let inputs = ClusterInputs {
            name: ctx.cluster.name.clone(),
            kubernetes_version: "v1.36.3".into(),
            endpoint: ctx.cluster.api_endpoint.clone(),
            lb_port: crate::node::LB_PORT,
            masters: vec![IPS[0].into()],
            pod_subnet: None,
            service_subnet: None,
            extra_sans: Vec::new(),
            fragments: Fragments::default(),
            pause_image: crate::registry::config::kubeadm_pause_image("v1.36.3").unwrap().into(),
            cgroup_v1_hosts: Vec::new(),
        };
        let k = Kubeadm::with_inputs(ctx, inputs).unwrap();
        vec![Arc::new(Init(k.clone())), Arc::new(Join::new(k.clone())), Arc::new(SaveState(k))]
    }

    fn engine(ctx: &Arc<Ctx>, world: &Arc<World>, states: Vec<State>) -> Engine<FakeHost> {
        let hosts = IPS.iter().map(|ip| answering(world, ip)).collect();
        Engine::new(ctx.clone(), hosts, states, 2)
    }

    fn ran(world: &World, ip: &str, what: &str) -> usize {
        world.commands(ip).iter().filter(|c| c.contains(what)).count()
    }

    #[tokio::test]
    async fn a_first_run_initialises_master0_and_joins_the_others_with_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
        engine(&ctx, &world, vec![State::new(); 3]).run(&phases(&ctx)).await.unwrap();
        assert_eq!(ran(&world, IPS[0], "kubeadm init --upload-certs"), 1);
        assert_eq!(ran(&world, IPS[0], "kubeadm token create"), 0, "init's own token is used");
        for ip in &IPS[1..] {
            assert_eq!(ran(&world, ip, "kubeadm join --config"), 1, "{ip}");
            assert_eq!(world.state(ip)["kubeadm"].detail["role"], "worker");
        }
        assert_eq!(world.state(IPS[0])["kubeadm"].detail["role"], "init");
        assert_eq!(ran(&world, IPS[0], crate::node::CLUSTER_FILE), 1, "the description is saved on master0");
        assert!(ctx.local_state.join("cluster.yaml").exists(), "and beside the installer");
    }

    #[tokio::test]
    async fn a_rerun_never_initialises_again_and_joins_only_who_has_not() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
        let joined = |build: &str| {
            let mut s = State::new();
            let detail = serde_json::json!({});
            let rec =
                Record { cluster: "c".into(), phase: "kubeadm".into(), installer: build.into(), completed: 0, detail };
            s.insert("kubeadm".into(), rec);
            s
        };
        // master0 initialised by an older build, one worker joined, one not.
        let states = vec![joined("build-0"), joined("build-0"), State::new()];
        engine(&ctx, &world, states).run(&phases(&ctx)).await.unwrap();
        assert_eq!(ran(&world, IPS[0], "kubeadm init"), 0, "the control plane is not re-initialised");
        assert_eq!(ran(&world, IPS[0], "kubeadm token create"), 1, "a fresh token for this run's join");
        assert_eq!(ran(&world, IPS[0], "upload-certs"), 0, "no master joins, so no certificate key");
        assert!(world.log(IPS[1]).is_empty(), "a joined worker is left alone");
        assert_eq!(ran(&world, IPS[2], "kubeadm join --config"), 1);
    }

    #[tokio::test]
    async fn a_failed_init_names_master0_and_nobody_joins() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, world) = (ctx(dir.path()), Arc::new(World::default()));
        world.fail(IPS[0], "kubeadm init", "[ERROR Port-6443]: Port 6443 is in use");
        let err = format!("{:#}", engine(&ctx, &world, vec![State::new(); 3]).run(&phases(&ctx)).await.unwrap_err());
        assert!(err.starts_with("10.0.0.1: kubeadm failed: kubeadm init exited with status 1"), "{err}");
        assert!(err.contains("Port 6443 is in use"), "{err}");
        assert!(IPS[1..].iter().all(|ip| ran(&world, ip, "kubeadm join") == 0));
        assert_eq!(local(&ctx, IPS[0])["phases"]["kubeadm"]["status"], "failed");
    }
}

mod preflight {
    use super::*;
    use crate::agent::Facts;
    use crate::protocol::lock::{Holder, Operation, tests::holder};
    use crate::run::lock::LockRequest;
    use crate::run::phases::preflight::{Stage, gate};
    use crate::run::preflight::{Problem, Severity};

    /// A host with ferry's agent of this build in place, answering the survey with `facts`.
    fn surveyed(world: &Arc<World>, ip: &str, stub_sha: &str, facts: Facts) -> Arc<FakeHost> {
        let (inner, agent) = (world.responder(ip), world.agent(ip));
        let sha = stub_sha.to_string();
        let commands = Arc::new(move |cmd: &str, stdin: &[u8]| {
            let out = inner(cmd, stdin);
            if cmd.starts_with("uname -m") {
                Output { stdout: format!("{}\n{sha}\n", std::env::consts::ARCH).into_bytes(), ..out }
            } else {
                out
            }
        });
        let facts: AgentResponder = Arc::new(move |call: &Call, stdin: &[u8]| {
            let out = agent(call, stdin);
            match call {
                Call::Facts { .. } if out.ok() => {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
                    agent_answer(Some(&Facts { time_ms: now.as_millis() as u64, ..facts.clone() }))
                }
                _ => out,
            }
        });
        Arc::new(FakeHost::new(ip, commands).with_agent(facts))
    }

    fn healthy(name: &str) -> Facts {
        Facts {
            hostname: name.into(),
            arch: std::env::consts::ARCH.into(),
            kernel: "6.1.0".into(),
            systemd: true,
            cpus: 4,
            mem_bytes: 8 << 30,
            disk_free: 100 << 30,
            machine_id: format!("id-{name}"),
            cgroup: "v2".into(),
            ..Default::default()
        }
    }

    fn lock_request() -> LockRequest {
        LockRequest { holder: Holder { operation: Operation::Join, pid: 5151, ..holder() }, force: false }
    }

    fn with_stub(dir: &Path) -> Arc<Ctx> {
        let mut c = Arc::try_unwrap(ctx(dir)).ok().unwrap();
        c.stub_sha = "0123abcd".into();
        Arc::new(c)
    }

    #[tokio::test]
    async fn a_pass_reports_each_hosts_cgroup_and_hands_over_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, world) = (with_stub(dir.path()), Arc::new(World::default()));
        let hosts: Vec<Option<Arc<FakeHost>>> =
            IPS.iter().map(|ip| Some(surveyed(&world, ip, &ctx.stub_sha, healthy(ip)))).collect();
        let passed = gate(&ctx, hosts, Vec::new(), 2, &Stage::new(), &lock_request()).await.unwrap();
        assert_eq!(passed.hosts.len(), 3);
        assert!(passed.staged.iter().all(Option::is_none), "the agent of this build was there already");
        assert!(passed.cgroup_v1_hosts.is_empty());
        for ip in IPS {
            assert_eq!(local(&ctx, ip)["phases"]["preflight"]["detail"]["cgroup"], "v2");
            assert!(world.commands(ip).iter().all(|c| !c.contains("rm -rf")), "nothing to clean up");
        }
    }

    #[tokio::test]
    async fn a_problem_anywhere_stops_before_anything_changes_and_names_every_failing_host() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, world) = (with_stub(dir.path()), Arc::new(World::default()));
        let small = Facts { cpus: 1, ..healthy(IPS[0]) };
        let hosts = vec![
            Some(surveyed(&world, IPS[0], &ctx.stub_sha, small)),
            Some(surveyed(&world, IPS[1], &ctx.stub_sha, healthy(IPS[1]))),
            None,
        ];
        let unreachable = Problem {
            host: IPS[2].into(),
            severity: Severity::Error,
            check: "ssh".into(),
            message: "connection refused".into(),
        };
        let stage = Stage::new();
        let err = gate(&ctx, hosts, vec![unreachable], 2, &stage, &lock_request()).await.err().unwrap().to_string();
        assert_eq!(
            err,
            "preflight found 2 problem(s) on 10.0.0.1, 10.0.0.3: nothing was installed; fix them and run again"
        );
        for ip in &IPS[..2] {
            let log = world.log(ip);
            assert_eq!(
                log.last().unwrap(),
                &Ran::Command(stage.cleanup_cmd()),
                "{ip}: what preflight staged is removed"
            );
            let records = world.calls(ip).into_iter().filter(|(c, _, _)| matches!(c, Call::Record { .. })).count();
            assert_eq!(records, 0, "{ip}: nothing is recorded on the host");
        }
        assert_eq!(local(&ctx, IPS[0])["phases"]["preflight"]["status"], "failed");
        assert_eq!(local(&ctx, IPS[1])["phases"]["preflight"]["status"], "ok");
        assert_eq!(local(&ctx, IPS[2])["phases"]["preflight"]["status"], "failed");
    }

    /// A host another operation holds stops preflight before its facts are even gathered,
    /// naming host and holder; the hosts that were locked are given back.
    #[tokio::test]
    async fn a_host_another_operation_holds_stops_preflight_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, world) = (with_stub(dir.path()), Arc::new(World::default()));
        world.held_by.lock().unwrap().insert(IPS[1].into(), holder());
        let hosts = IPS.iter().map(|ip| Some(surveyed(&world, ip, &ctx.stub_sha, healthy(ip)))).collect();
        let err = gate(&ctx, hosts, Vec::new(), 2, &Stage::new(), &lock_request()).await.err().unwrap();
        assert_eq!(
            format!("{err:#}"),
            "10.0.0.2 is locked by `run` of cluster lab, started 2026-12-06 12:03:01 UTC by root@build1 pid 4242; \
             wait for it, or if it is gone use --force-unlock: \
             preflight found 1 problem(s) on 10.0.0.2: nothing was installed; fix them and run again"
        );
        let facts = |ip| world.calls(ip).iter().filter(|(c, _, _)| matches!(c, Call::Facts { .. })).count();
        assert_eq!(facts(IPS[1]), 0, "nothing ran on the held host after the lock");
        let problems = &local(&ctx, IPS[1])["phases"]["preflight"]["detail"]["problems"];
        assert_eq!(problems[0]["check"], "lock", "{problems}");
        for ip in [IPS[0], IPS[2]] {
            let Call::Lock { holder, force_unlock } = &world.calls(ip)[0].0 else { panic!("{ip}: locked first") };
            assert_eq!((holder, *force_unlock), (&lock_request().holder, false));
        }
    }
}

mod reset;
