//! Certificates for the TLS tests, generated at run time with rcgen (no key is committed): a CA,
//! server and client certificates signed by it, expired and wrong-host variants, written as PEM
//! files into a temporary directory removed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A CA and the files of the certificates it signed.
pub struct Pki {
    pub dir: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
    /// The CA certificate as a PEM file.
    pub ca_pem: PathBuf,
}

/// A certificate and its key as PEM files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A fresh CA named `name` in a new temporary directory.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "mqnet-tls-{}-{}-{name}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mqnet test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&ca_key).expect("CA cert");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).expect("write CA");
        Pki {
            dir,
            ca,
            ca_key,
            ca_pem,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), valid now.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.issue(file, names, false)
    }

    /// A certificate for `names` that expired long ago.
    pub fn expired(&self, file: &str, names: &[&str]) -> Leaf {
        self.issue(file, names, true)
    }

    fn issue(&self, file: &str, names: &[&str], expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, file);
        if expired {
            params.not_before = date_time_ymd(2001, 1, 1);
            params.not_after = date_time_ymd(2002, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        leaf
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `path` exists (for skipping tests whose external tool is missing).
pub fn exists(path: &Path) -> bool {
    path.exists()
}
