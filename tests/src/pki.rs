//! Throw-away certificates for one control plane: a CA, the API server's serving certificate,
//! an admin client certificate in `system:masters`, and the service-account signing key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

pub struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
}

impl Pki {
    /// Writes everything into `dir`; the serving certificate is valid for `localhost` and `ips`.
    pub fn generate(dir: &Path, ips: &[IpAddr]) -> Result<Self> {
        let write = |name: &str, pem: String| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };

        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "herald-test-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let mut serving =
            CertificateParams::new(vec!["localhost".to_owned(), "kubernetes".to_owned()])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "herald-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        let service_account = KeyPair::generate()?;
        Ok(Self {
            ca_cert: write("ca.crt", ca.pem())?,
            serving_cert: write("apiserver.crt", serving_cert.pem())?,
            serving_key: write("apiserver.key", serving_key.serialize_pem())?,
            admin_cert: write("admin.crt", admin_cert.pem())?,
            admin_key: write("admin.key", admin_key.serialize_pem())?,
            service_account_key: write("service-account.key", service_account.serialize_pem())?,
            service_account_public_key: write(
                "service-account.pub",
                service_account.public_key_pem(),
            )?,
        })
    }
}
