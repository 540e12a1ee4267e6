//! The few AdmissionReview v1 shapes the injector reads and writes.
//!
//! Small hand-written serde types instead of `kube-core`'s: its
//! `AdmissionResponse.patch` serialises as an array of numbers rather than the
//! base64 string the API server expects (kube-rs/kube#1781), and the pod
//! itself stays a `serde_json::Value` so no 10 MB of generated API types are
//! compiled for the handful of fields we touch.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `apiVersion` of every review this webhook speaks.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of every review.
pub const KIND: &str = "AdmissionReview";

/// The group/version/kind of the object under review.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

/// The `request` half of an AdmissionReview: only the fields we use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Echoed in the response; the API server matches on it.
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// The pod as it would be stored (for `CREATE`).
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

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

/// A whole AdmissionReview, as received or as answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

impl AdmissionReview {
    /// Wraps a response in the envelope the API server expects back.
    pub fn answer(response: AdmissionResponse) -> Self {
        AdmissionReview {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            request: None,
            response: Some(response),
        }
    }

    /// Parses a request body and checks it is an `admission.k8s.io/v1`
    /// AdmissionReview with a request and a uid. Anything else is a
    /// [`ReviewError`] with a sentence saying what was wrong.
    pub fn parse_request(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
        let review: AdmissionReview =
            serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
        if review.kind != KIND || review.api_version != API_VERSION {
            return Err(ReviewError::WrongType {
                api_version: review.api_version,
                kind: review.kind,
            });
        }
        let request = review.request.ok_or(ReviewError::NoRequest)?;
        if request.uid.trim().is_empty() {
            return Err(ReviewError::NoUid);
        }
        Ok(request)
    }
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
