//! The AdmissionReview v1 envelope: a request body in, a response out.
//!
//! The request is read through the borrowed, lenient view in [`super::pod`]
//! (parsed once, nothing the injector does not read is built); the response
//! is a small hand-written serde type. Not `kube-core`'s types: its
//! `AdmissionResponse.patch` serialises as an array of numbers rather than
//! the base64 string the API server expects (kube-rs/kube#1781), and its pod
//! would be a full `serde_json::Value` tree.

use serde::{Deserialize, Serialize};

use super::pod::{Request, Review};

/// `apiVersion` of every review this webhook speaks.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of every review.
pub const KIND: &str = "AdmissionReview";

/// The `response` half of an AdmissionReview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    /// Always `JSONPatch` when a patch is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// The JSONPatch, base64 of its JSON text (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Shown to the user by `kubectl` and recorded in the audit log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// An AdmissionReview as answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

impl AdmissionReview {
    /// Wraps a response in the envelope the API server expects back.
    pub fn answer(response: AdmissionResponse) -> Self {
        AdmissionReview {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            response: Some(response),
        }
    }
}

/// Parses a request body once and checks it is an `admission.k8s.io/v1`
/// AdmissionReview with a request and a uid. Anything else is a
/// [`ReviewError`] with a sentence saying what was wrong.
pub fn parse_request(body: &[u8]) -> Result<Request<'_>, ReviewError> {
    let review: Review =
        serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
    let api_version = review.api_version.get().unwrap_or_default();
    let kind = review.kind.get().unwrap_or_default();
    if kind != KIND || api_version != API_VERSION {
        return Err(ReviewError::WrongType {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        });
    }
    let request = review.request.0.ok_or(ReviewError::NoRequest)?;
    if request.uid.get().is_none_or(|u| u.trim().is_empty()) {
        return Err(ReviewError::NoUid);
    }
    Ok(request)
}

/// Why a request body is not a review we can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview JSON document: {0}")]
    NotJson(String),
    #[error(
        "expected apiVersion {API_VERSION:?} and kind {KIND:?}, got apiVersion {api_version:?} \
         and kind {kind:?}; list only v1 in the webhook's admissionReviewVersions"
    )]
    WrongType { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview request has no uid, so no response could be matched to it")]
    NoUid,
}
