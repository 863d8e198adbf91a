//! Association admission: which AE titles may associate, and the refusals
//! the receiver sends itself when it is full or out of disk.

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource, Pdu, UserIdentity,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Called AE must be ours; calling AE must be on the allowlist (empty = any).
#[derive(Debug, Clone)]
pub struct AeAccess {
    pub allowed_calling: Vec<String>,
}

impl AccessControl for AeAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let calling = calling_ae_title.trim();
        if !self.allowed_calling.is_empty() && !self.allowed_calling.iter().any(|a| a.trim() == calling) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Why the receiver itself refuses an association before negotiating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// All association slots are taken.
    TooManyAssociations,
    /// The spool's disk is above its watermark.
    DiskWatermark,
    /// The daemon is shutting down.
    ShuttingDown,
}

impl Congestion {
    pub fn metric_reason(self) -> &'static str {
        match self {
            Congestion::TooManyAssociations => "local_limit_exceeded",
            Congestion::DiskWatermark => "disk_watermark",
            Congestion::ShuttingDown => "shutting_down",
        }
    }

    fn rj_reason(self) -> AssociationRJServiceProviderPresentationReason {
        match self {
            Congestion::TooManyAssociations => AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            Congestion::DiskWatermark | Congestion::ShuttingDown => {
                AssociationRJServiceProviderPresentationReason::TemporaryCongestion
            }
        }
    }
}

/// Reads the A-ASSOCIATE-RQ and answers A-ASSOCIATE-RJ (transient, service
/// provider), so the sender knows to retry later rather than seeing a reset.
pub async fn refuse(mut socket: TcpStream, why: Congestion, max_pdu: u32) {
    let exchange = async {
        let mut buf = bytes::BytesMut::with_capacity(8192);
        // The request must be read first: a peer still writing it would see a reset.
        let _ = dicom_ul::association::read_pdu_from_wire_async(&mut socket, &mut buf, max_pdu, false).await;
        let rj = Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(why.rj_reason()),
        });
        let mut out = Vec::with_capacity(16);
        if dicom_ul::pdu::write_pdu(&mut out, &rj).is_ok() {
            let _ = socket.write_all(&out).await;
        }
        let _ = socket.shutdown().await;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_and_called_title() {
        let open = AeAccess {
            allowed_calling: vec![],
        };
        assert!(open.check_access("SPINEAGENT", "ANY", "SPINEAGENT", None).is_ok());
        assert_eq!(
            open.check_access("SPINEAGENT", "ANY", "OTHER", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        let closed = AeAccess {
            allowed_calling: vec!["MR1".into()],
        };
        assert!(closed.check_access("SPINEAGENT", "MR1", "SPINEAGENT", None).is_ok());
        assert_eq!(
            closed.check_access("SPINEAGENT", "MR2", "SPINEAGENT", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
    }
}
