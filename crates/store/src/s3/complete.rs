//! `CompleteMultipartUpload` with `If-None-Match: *`: the conditional write
//! that makes a create-only upload of several parts atomic (S3 answers 412
//! if the key exists when the parts are assembled). object_store sends this
//! only for its own copies, not through its public API, so ferry signs and
//! sends the one request itself, with object_store's SigV4 signer and the
//! same credentials, endpoint and region as every other request.
//!
//! Not every S3 server honours the header: AWS S3 and moto do; Ceph RGW 16
//! ignores it and completes anyway. The upload checks the key with a HEAD
//! just before, which is all such a server allows.

use bytes::Bytes;
use object_store::aws::AwsAuthorizer;
use object_store::path::Path as Key;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{Inner, backend};
use crate::{Error, Result};

/// Tries before a failing completion counts as the backend being unavailable.
const ATTEMPTS: u64 = 4;

/// SigV4's URI encoding: everything but unreserved characters.
const URI_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Where requests go, as object_store sends them (path style).
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// `http://HOST:PORT/BUCKET` or `https://s3.REGION.amazonaws.com/BUCKET`.
    pub bucket_url: String,
    pub region: String,
    /// A client for these requests (object_store's own is not exposed).
    pub client: reqwest::Client,
}

impl Inner {
    /// Assembles the parts into `key` only if nothing is there:
    /// [`Error::AlreadyExists`] otherwise.
    pub(super) async fn complete_if_absent(&self, key: &Key, upload_id: &str, etags: &[String]) -> Result<()> {
        let endpoint = &self.endpoint;
        let path: Vec<String> =
            key.as_ref().split('/').map(|s| utf8_percent_encode(s, URI_ENCODE).to_string()).collect();
        let url = format!(
            "{}/{}?uploadId={}",
            endpoint.bucket_url,
            path.join("/"),
            utf8_percent_encode(upload_id, URI_ENCODE)
        );
        let body = Bytes::from(complete_body(etags));
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(&url)
            .header(http::header::IF_NONE_MATCH, "*")
            .header(http::header::CONTENT_TYPE, "application/xml")
            .body(object_store::client::HttpRequestBody::from(body.clone()))
            .map_err(|e| backend("building a completion request", &e))?;
        let credential =
            self.s3.credentials().get_credential().await.map_err(|e| backend("getting S3 credentials", &e))?;
        AwsAuthorizer::new(&credential, "s3", &endpoint.region)
            .try_authorize(&mut request, None)
            .map_err(|e| backend("signing a completion request", &e))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = endpoint.client.post(&url).headers(request.headers().clone()).body(body.clone()).send().await;
            let (status, text) = match sent {
                Ok(response) => {
                    let status = response.status();
                    (status, response.text().await.unwrap_or_default())
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "completing an upload failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                    continue;
                }
                Err(e) => return Err(backend("completing an upload", &e)),
            };
            match status.as_u16() {
                412 => return Err(Error::AlreadyExists { path: key.as_ref().to_owned() }),
                // S3 may answer 200 and still fail, with an <Error> in the body.
                200 if !text.contains("<Error>") => return Ok(()),
                // An earlier attempt completed it and its answer was lost.
                404 if attempt > 1 && text.contains("NoSuchUpload") => return Ok(()),
                code if (code >= 500 || text.contains("<Error>")) && attempt < ATTEMPTS => {
                    tracing::warn!(code, attempt, "completing an upload failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                _ => return Err(backend("completing an upload", &format!("HTTP {status}: {}", first_line(&text)))),
            }
        }
    }
}

/// The request body: each part's number and ETag, in order.
fn complete_body(etags: &[String]) -> String {
    let mut body = String::from("<CompleteMultipartUpload>");
    for (index, etag) in etags.iter().enumerate() {
        let etag = etag.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;");
        body.push_str(&format!("<Part><ETag>{etag}</ETag><PartNumber>{}</PartNumber></Part>", index + 1));
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_lists_parts_in_order_with_escaped_etags() {
        let body = complete_body(&["\"a1\"".to_owned(), "\"b2\"".to_owned()]);
        assert_eq!(
            body,
            "<CompleteMultipartUpload><Part><ETag>&quot;a1&quot;</ETag><PartNumber>1</PartNumber></Part>\
             <Part><ETag>&quot;b2&quot;</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"
        );
    }

    #[test]
    fn keys_are_encoded_as_sigv4_wants() {
        let encoded: String = utf8_percent_encode("a b+c~d.é", URI_ENCODE).to_string();
        assert_eq!(encoded, "a%20b%2Bc~d.%C3%A9");
    }
}
