//! The configured connectors, by account name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Connector;

#[derive(Clone, Default)]
pub struct Connectors {
    by_name: BTreeMap<String, Arc<dyn Connector>>,
}

impl Connectors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, connector: Arc<dyn Connector>) -> Self {
        self.by_name.insert(connector.name().to_owned(), connector);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Connector>> {
        self.by_name.values()
    }
}
