//! TLS toward clients and toward the servers: redis-cli over TLS through the proxy, and a live handover between
//! two Redis servers that speak only TLS. Certificates come from a CA generated for the test.

mod support;

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use redis_handover::handover::Phase;
use redis_handover::primary::Side;
use serde_json::json;
use support::{Proxy, RedisServer, Reply, Version};

/// A test CA and a certificate it signed for localhost and 127.0.0.1, as PEM files in a folder of their own.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn generate(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("rh-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "redis-handover test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
        std::fs::write(&pki.cert, leaf.pem()).unwrap();
        std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
        pki
    }

    /// The redis-server arguments for a TLS-only server with this certificate.
    fn redis_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.to_str().unwrap().to_string();
        vec![
            "--tls-cert-file".into(),
            path(&self.cert),
            "--tls-key-file".into(),
            path(&self.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--tls-replication".into(),
            "yes".into(),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_cli_tls(pki: &Pki, port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec![
        "--tls",
        "--cacert",
        pki.ca.to_str().unwrap(),
        "-h",
        "127.0.0.1",
        "-p",
        &port,
    ];
    all.extend_from_slice(args);
    let out = support::run_tool("redis-cli", &all);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn clients_speak_tls_to_the_proxy() {
    let pki = Pki::generate("client");
    let redis = RedisServer::start(Version::V6_2, &[]);
    let proxy = Proxy::start(redis.addr(), None, |c| {
        c.tls_cert_file = Some(pki.cert.clone());
        c.tls_key_file = Some(pki.key.clone());
    });
    assert_eq!(redis_cli_tls(&pki, proxy.addr.port(), &["SET", "secure", "yes"]), "OK");
    assert_eq!(redis_cli_tls(&pki, proxy.addr.port(), &["GET", "secure"]), "yes");
    assert_eq!(redis.direct().run("GET secure"), Reply::bulk("yes"));
    // A client that does not speak TLS gets no Redis reply from a TLS port.
    let mut plain = proxy.client();
    plain.write_raw(b"PING\r\n");
    let (reply, _) = plain.read_until_closed(std::time::Duration::from_secs(3));
    assert!(!String::from_utf8_lossy(&reply).contains("PONG"));
}

#[test]
fn a_handover_between_servers_that_speak_only_tls() {
    let pki = Pki::generate("backend");
    let args = pki.redis_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let old = RedisServer::start_tls(Version::V7_0, &args);
    let new = RedisServer::start_tls(Version::V7_0, &args);
    let proxy = Proxy::start(old.addr(), Some(new.addr()), |c| {
        c.backend_tls = true;
        c.backend_tls_ca_file = Some(pki.ca.clone());
        c.tls_cert_file = Some(pki.cert.clone());
        c.tls_key_file = Some(pki.key.clone());
    });
    assert_eq!(redis_cli_tls(&pki, proxy.addr.port(), &["SET", "k", "before"]), "OK");
    let report = proxy.handover(json!({}));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    assert_eq!(redis_cli_tls(&pki, proxy.addr.port(), &["GET", "k"]), "before");
    assert_eq!(redis_cli_tls(&pki, proxy.addr.port(), &["SET", "k", "after"]), "OK");
    assert_eq!(
        redis_cli_tls(&pki, new.port, &["GET", "k"]),
        "after",
        "the write went to NEW, over TLS"
    );
    assert_eq!(proxy.status().primary.side, Side::New);
}
