//! A throwaway certificate authority for a local cluster (`bootstrap --tls`): a CA certificate
//! and one node certificate it signs, covering the hosts the nodes listen on. Not for
//! production: bring certificates from your own CA there (`--tls-cert`, `--tls-key`,
//! `--tls-ca`).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// The files [`make`] writes.
#[derive(Debug, Clone)]
pub struct LocalCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.pem`, `node.pem` and `node-key.pem` (mode 0600) into `dir`; the node certificate
/// covers `hosts` (names or IP addresses), `localhost` and `127.0.0.1`. Files already there are
/// kept, so a restarted local cluster keeps its CA.
pub fn make(dir: &Path, hosts: &[&str]) -> anyhow::Result<LocalCa> {
    let files = LocalCa {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node-key.pem"),
    };
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "raftlord local cluster CA");
    let ca = ca_params.self_signed(&ca_key)?;

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    names.extend(hosts.iter().map(|h| h.to_string()));
    names.sort();
    names.dedup();
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "raftlord node");
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    crate::worker::runner::write_private(dir, "node-key.pem", &key.serialize_pem())?;
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.ca, ca.pem())?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_certificate_makes_a_server_config_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = make(dir.path(), &["10.0.0.1"]).unwrap();
        raftlord_raft::tls::server_config(&first.cert, &first.key).unwrap();
        let ca = std::fs::read(&first.ca).unwrap();
        make(dir.path(), &[]).unwrap();
        assert_eq!(std::fs::read(&first.ca).unwrap(), ca, "a second run keeps the CA");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&first.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
