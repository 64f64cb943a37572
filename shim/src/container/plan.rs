//! What the spec's annotations ask of this runtime.

use std::{collections::HashMap, path::PathBuf};

use crate::{
    annotations,
    error::Result,
    ready::{ProbeSettings, ReadyPlan},
    ticker::TickerPlan,
};

/// What the spec's annotations ask of this runtime. Invalid values fail the
/// creation with an error naming the annotation and the accepted form.
pub(super) struct Plan {
    pub restore_from: Option<PathBuf>,
    pub ready: Option<ReadyPlan>,
    pub ticker: Option<TickerPlan>,
    /// Stopped when the host agent's lease ends (a restore policy).
    pub fenced: bool,
}

impl Plan {
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<Plan> {
        let restore_from =
            annotations.get(annotations::RESTORE_FROM).map(|v| annotations::restore_from(v)).transpose()?;
        let store = annotations
            .get(annotations::READY_STORE)
            .map(|v| annotations::ready_store(v))
            .transpose()?
            .unwrap_or_else(|| PathBuf::from(migrate_oci::DEFAULT_STORE_ROOT));
        // The probe's kind sets its settings' defaults.
        let ready = match annotations.get(annotations::CHECKPOINT_WHEN_READY).map(|v| annotations::ready_probe(v)) {
            None => {
                ProbeSettings::refuse_without_probe(annotations)?;
                None
            }
            Some(probe) => {
                let probe = probe?;
                let settings = ProbeSettings::from_annotations(annotations, &probe)?;
                Some(ReadyPlan { probe, settings, store })
            }
        };
        let ticker = TickerPlan::from_annotations(annotations)?;
        let fenced = annotations
            .get(annotations::RESTORE_POLICY)
            .map(|v| annotations::fenced_by_policy(v))
            .transpose()?
            .unwrap_or(false);
        Ok(Plan { restore_from, ready, ticker, fenced })
    }
}
