//! Inputs other than the App Mesh CLI shapes: Kubernetes controller objects and CloudFormation
//! templates, translated into create-shape documents and loaded like them.

mod cfn;
mod k8s;

use serde_json::Value;

use crate::load::Loaded;

pub(crate) use cfn::{has_short_forms, parse_yaml};

/// What one load has read that must wait for every file: Kubernetes objects reference each other
/// across files, so they are translated only once all are read.
#[derive(Debug, Default)]
pub(crate) struct Imports {
    k8s: Vec<k8s::Object>,
}

impl Imports {
    /// Takes a document that is a Kubernetes object or a CloudFormation template; returns false
    /// (taking nothing) for the API's own shapes.
    pub(crate) fn take(&mut self, file: &str, doc: &Value, out: &mut Loaded) -> bool {
        if k8s::is_object(doc) {
            k8s::collect(file, doc, &mut self.k8s, out);
            true
        } else if cfn::is_template(doc) {
            cfn::load(file, doc, out);
            true
        } else {
            false
        }
    }

    /// Loads what waited for every file.
    pub(crate) fn finish(self, out: &mut Loaded) {
        k8s::finish(&self.k8s, out);
    }
}
