//! Agent identity on a farm (three coordinators, two agents): the agent token is no skeleton
//! key. A second agent joining under a registered agent's name is refused; an agent joining
//! under a new name reads no tenant's blob without a slice grant (and a forged grant is
//! refused); a restarted agent resumes its registration with its kept key; `kiln context rm
//! --revoke` makes every coordinator and every agent's peer endpoint refuse the revoked
//! agent's certificate, and the agent stops. (The embedded farm's agent joins with its kept
//! key on every build: every embedded test exercises the resumed registration.)

use kiln_agent::peer::Peer;
use kiln_shared::api::{AgentRequest, BlobRequest, Grant};
use kiln_shared::client::AgentFarm;
use kiln_shared::digest::Digest;
use kiln_shared::transport::{ClusterCa, TransportError};
use kiln_shared::wire::ErrorCode;
use kiln_tests::cluster::Cluster;
use kiln_tests::{stderr, stdout, wait_for, TempDir};
use std::net::SocketAddr;
use std::time::Duration;

fn refused(r: Result<impl std::fmt::Debug, TransportError>, code: ErrorCode, words: &str) {
    match r {
        Err(TransportError::Remote(e)) if e.code == code && e.message.contains(words) => {}
        other => panic!("expected {code:?} with {words:?}, got {other:?}"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}

#[test]
fn the_agent_token_is_no_skeleton_key_and_a_revoked_agent_is_refused_everywhere() {
    let mut c = Cluster::start(3);
    c.add_agent("a1", &["linux/amd64"], 2);
    c.add_agent("a2", &["linux/amd64"], 2);
    let hosts: Vec<SocketAddr> = c.addrs.iter().map(|a| a.parse().expect("address")).collect();

    // A tenant's build uploads a context blob to the coordinators.
    let ctx = TempDir::new("identity-ctx");
    let secret = format!("victim's context {}\n", now_ms());
    ctx.write("Dockerfile", "FROM scratch\nCOPY private.txt /\n");
    ctx.write("private.txt", &secret);
    let digest = Digest::of(secret.as_bytes()).to_string();
    let token = stdout(&c.ok(c.kiln(&["coordinator", "token", "--role", "user", "--tenant", "victim"], ctx.path()))).trim().to_string();
    let build = |c: &Cluster, tag: &str| {
        let out = TempDir::new(&format!("identity-out-{tag}"));
        let dest = format!("type=local,dest={}", out.path().display());
        let ctx_path = ctx.path().display().to_string();
        let o = c.kiln_with_token(&["build", "--platform", "linux/amd64", "-o", &dest, &ctx_path], ctx.path(), &token);
        assert!(o.status.success(), "build {tag}: {}", stderr(&o));
        assert_eq!(std::fs::read_to_string(out.path().join("private.txt")).expect("the built file"), secret);
    };
    build(&c, "first");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let patience = Duration::from_secs(10);
    rt.block_on(async {
        // A second agent under a live agent's name: refused (before this, it got `agent:a1`).
        refused(AgentFarm::join(&hosts, &c.agent_token, "a1").await.map(|_| ()), ErrorCode::PermissionDenied, "registered to another key");

        // A new name joins (the token is valid) but reads nothing of the tenant's, on any
        // coordinator: no grant, or a grant the cluster CA did not sign.
        let evil = AgentFarm::join(&hosts, &c.agent_token, "evil").await.expect("a new agent name joins");
        let get = |grant: Option<Grant>| AgentRequest::Blob(BlobRequest::Get { digest: digest.clone(), offset: 0, len: 1 << 20 }, grant);
        let forger = ClusterCa::generate("forger").expect("ca");
        let mut forged = Grant {
            agent: "evil".into(),
            tenant: "victim".into(),
            scope: "tenant:victim".into(),
            blobs: vec![digest.clone()],
            expires_ms: now_ms() + 60_000,
            ..Default::default()
        };
        forged.signature = forger.sign(&forged.signed_bytes()).expect("sign");
        let (ca, identity) = evil.credentials();
        for host in &hosts {
            let one = AgentFarm::open(&[*host], &ca, &identity, evil.principal.clone()).expect("open");
            refused(one.call(&get(None), patience, patience).await, ErrorCode::PermissionDenied, "no slice grant");
            refused(one.call(&get(Some(forged.clone())), patience, patience).await, ErrorCode::PermissionDenied, "not the cluster CA's");
        }
    });

    // A restarted agent resumes its registration with its kept key, and builds.
    let key_path = c.dir.path().join("a1").join("agent.key");
    let key_before = std::fs::read(&key_path).expect("a1 keeps its key");
    c.agent("a1").kill();
    c.agent("a1").restart();
    wait_for("a1 to be ready again", Duration::from_secs(60), || c.context_status("a1").as_deref() == Some("ready"));
    assert_eq!(std::fs::read(&key_path).expect("key"), key_before, "the restarted agent joined with the same key");
    assert!(!c.agent("a1").log().contains("registered to another key"), "{}", c.agent("a1").log());

    // A certificate of a2 (what a thief of its data dir holds), then a2 is revoked.
    let a2_key = std::fs::read_to_string(c.dir.path().join("a2").join("agent.key")).expect("a2's key");
    let stolen = rt
        .block_on(AgentFarm::join_with_key(&hosts, &c.agent_token, "a2", Some(&a2_key), Default::default()))
        .expect("a2's own key joins as a2");
    let o = c.ok(c.kiln(&["context", "rm", "--revoke", "a2"], ctx.path()));
    assert!(stdout(&o).contains("a2 revoked"), "{}", stdout(&o));
    assert!(c.contexts().iter().all(|x| x["name"] != "a2"), "a2 is gone: {:?}", c.contexts());
    let a1_endpoint: SocketAddr = c
        .contexts()
        .iter()
        .find(|x| x["name"] == "a1")
        .and_then(|x| x["endpoint"].as_str().map(str::to_string))
        .expect("a1's endpoint")
        .parse()
        .expect("endpoint");
    rt.block_on(async {
        let (ca, identity) = stolen.credentials();
        // Every coordinator refuses the revoked certificate...
        for host in &hosts {
            let one = AgentFarm::open(&[*host], &ca, &identity, stolen.principal.clone()).expect("open");
            let poll = AgentRequest::Poll { agent: "a2".into(), running: vec![], cache_bytes: 0, wait_ms: 0 };
            refused(one.call(&poll, patience, patience).await, ErrorCode::PermissionDenied, "revoked");
        }
        // ...joining again with the revoked key is refused...
        let again = AgentFarm::join_with_key(&hosts, &c.agent_token, "a2", Some(&a2_key), Default::default()).await;
        refused(again.map(|_| ()), ErrorCode::PermissionDenied, "revoked");
        // ...and so does the other agent's peer endpoint, once its poll has brought the list.
        let dir = TempDir::new("identity-peer");
        let peer = Peer::new(dir.path(), &ca, &identity, 0).expect("peer");
        let mut last = String::new();
        for _ in 0..100 {
            last = match peer.record(&"0".repeat(64), &[a1_endpoint]).await {
                Ok(_) => "served".into(),
                Err(e) => e.to_string(),
            };
            if last.contains("revoked") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(last.contains("revoked"), "a1's peer endpoint said: {last}");
    });
    // The revoked agent stops, saying why.
    wait_for("a2 to stop", Duration::from_secs(30), || !c.agent("a2").alive());
    assert!(c.agent("a2").log().contains("revoked"), "{}", c.agent("a2").log());

    // The farm goes on building on a1, under the grants its slices carry.
    build(&c, "after");
}
