//! The configured connectors, by provider name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Connector;

#[derive(Clone, Default)]
pub struct Connectors {
    by_name: BTreeMap<&'static str, Arc<dyn Connector>>,
}

impl Connectors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, connector: Arc<dyn Connector>) -> Self {
        self.by_name.insert(connector.name(), connector);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }
}
