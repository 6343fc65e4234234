//! Credentials after the environment (which `AmazonS3Builder::from_env`
//! reads): the shared files awscli uses, `~/.aws/credentials` and
//! `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`),
//! profile `AWS_PROFILE` or `default`. A profile gives static keys, or a
//! `credential_process`: a command that prints credentials as JSON, run
//! again before they expire. Without either, object_store goes on to
//! instance and web-identity credentials. SSO profiles are not supported.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use object_store::CredentialProvider;
use object_store::aws::{AmazonS3Builder, AwsCredential};
use serde::Deserialize;

/// Credentials from a process are fetched again this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Adds what the shared files say to `builder`: credentials, unless the
/// environment has some; the region, unless one is given.
pub(super) fn from_shared_files(mut builder: AmazonS3Builder, region_given: bool) -> AmazonS3Builder {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let credentials_file = read_aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_file = read_aws_file("AWS_CONFIG_FILE", "config");
    // As awscli: the credentials file first, then the profile in the config file.
    let lookup = |key: &str| {
        credentials_file
            .as_deref()
            .and_then(|text| ini_value(text, &profile, key))
            .or_else(|| config_file.as_deref().and_then(|text| ini_value(text, &config_section, key)))
    };
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        if let (Some(id), Some(secret)) = (lookup("aws_access_key_id"), lookup("aws_secret_access_key")) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(token) = lookup("aws_session_token") {
                builder = builder.with_token(token);
            }
        } else if let Some(command) = lookup("credential_process") {
            builder = builder.with_credentials(Arc::new(ProcessCredentials::new(command)));
        }
    }
    let region_in_env = std::env::var_os("AWS_REGION").is_some() || std::env::var_os("AWS_DEFAULT_REGION").is_some();
    if !region_given
        && !region_in_env
        && let Some(region) = config_file.as_deref().and_then(|text| ini_value(text, &config_section, "region"))
    {
        builder = builder.with_region(region);
    }
    builder
}

/// An AWS shared file: `$VAR`, else `~/.aws/NAME`.
fn read_aws_file(var: &str, name: &str) -> Option<String> {
    let path = match std::env::var_os(var) {
        Some(path) => std::path::PathBuf::from(path),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".aws").join(name),
    };
    std::fs::read_to_string(path).ok()
}

/// `key` in `[section]` of an INI text (the AWS shared files' format).
fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim());
        } else if current == Some(section)
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_owned());
        }
    }
    None
}

/// `credential_process`: runs the command (through `sh -c`, so quoting works
/// as in a shell) and keeps what it printed until shortly before it expires.
#[derive(Debug)]
struct ProcessCredentials {
    command: String,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

/// What a credential process prints (version 1 of the format).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessOutput {
    version: u32,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    /// RFC 3339; absent for credentials that do not expire.
    expiration: Option<String>,
}

impl ProcessCredentials {
    fn new(command: String) -> Self {
        Self { command, cached: tokio::sync::Mutex::new(None) }
    }

    async fn run(&self) -> Result<(AwsCredential, Option<SystemTime>), String> {
        let command = self.command.clone();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run credential_process: {e}"))?;
        if !output.status.success() {
            return Err(format!("credential_process failed: {}", output.status));
        }
        parse_output(&output.stdout)
    }
}

/// The credentials and their expiry from a credential process's output.
fn parse_output(stdout: &[u8]) -> Result<(AwsCredential, Option<SystemTime>), String> {
    let printed: ProcessOutput =
        serde_json::from_slice(stdout).map_err(|e| format!("credential_process printed no valid credentials: {e}"))?;
    if printed.version != 1 {
        return Err(format!("credential_process printed version {}, not 1", printed.version));
    }
    let expires = match &printed.expiration {
        Some(at) => Some(
            chrono::DateTime::parse_from_rfc3339(at)
                .map_err(|e| format!("credential_process printed a bad Expiration {at:?}: {e}"))?
                .into(),
        ),
        None => None,
    };
    let credential = AwsCredential {
        key_id: printed.access_key_id,
        secret_key: printed.secret_access_key,
        token: printed.session_token,
    };
    Ok((credential, expires))
}

#[async_trait]
impl CredentialProvider for ProcessCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        let fresh =
            |expires: &Option<SystemTime>| expires.is_none_or(|at| at > SystemTime::now() + REFRESH_BEFORE_EXPIRY);
        if let Some((credential, expires)) = cached.as_ref()
            && fresh(expires)
        {
            return Ok(credential.clone());
        }
        let (credential, expires) =
            self.run().await.map_err(|e| object_store::Error::Generic { store: "S3", source: e.into() })?;
        let credential = Arc::new(credential);
        *cached = Some((credential.clone(), expires));
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_files_are_read_by_profile() {
        let text = "[default]\naws_access_key_id = AK1\naws_secret_access_key=SK1\n\n[ci]\naws_access_key_id=AK2\n";
        assert_eq!(ini_value(text, "default", "aws_access_key_id").as_deref(), Some("AK1"));
        assert_eq!(ini_value(text, "default", "aws_secret_access_key").as_deref(), Some("SK1"));
        assert_eq!(ini_value(text, "ci", "aws_access_key_id").as_deref(), Some("AK2"));
        assert_eq!(ini_value(text, "ci", "aws_secret_access_key"), None);
        assert_eq!(ini_value("[profile x]\nregion = eu-west-1\n", "profile x", "region").as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn process_output_is_parsed_with_its_expiry() {
        let printed = br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","SessionToken":"T","Expiration":"2030-01-02T03:04:05Z"}"#;
        let (credential, expires) = parse_output(printed).unwrap();
        assert_eq!((credential.key_id.as_str(), credential.secret_key.as_str()), ("AK", "SK"));
        assert_eq!(credential.token.as_deref(), Some("T"));
        assert_eq!(expires, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_553_445)));
        let (_, never) = parse_output(br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK"}"#).unwrap();
        assert_eq!(never, None);
        assert!(parse_output(br#"{"Version":2,"AccessKeyId":"AK","SecretAccessKey":"SK"}"#).is_err());
        assert!(parse_output(b"not json").is_err());
        assert!(
            parse_output(br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","Expiration":"soon"}"#).is_err()
        );
    }

    #[tokio::test]
    async fn a_credential_process_is_run_once_until_its_credentials_expire() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("runs");
        let command = format!(
            r#"echo x >> '{}'; echo '{{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","Expiration":"2999-01-01T00:00:00Z"}}'"#,
            count.display()
        );
        let provider = ProcessCredentials::new(command);
        let first = provider.get_credential().await.unwrap();
        let second = provider.get_credential().await.unwrap();
        assert_eq!((first.key_id.as_str(), second.key_id.as_str()), ("AK", "AK"));
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1, "cached, not run again");

        let expiring = ProcessCredentials::new(format!(
            r#"echo x >> '{}'; echo '{{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","Expiration":"2000-01-01T00:00:00Z"}}'"#,
            count.display()
        ));
        expiring.get_credential().await.unwrap();
        expiring.get_credential().await.unwrap();
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3, "expired: run each time");

        let failing = ProcessCredentials::new("exit 3".into());
        assert!(failing.get_credential().await.is_err());
    }
}
