//! Container requests to the agent (DESIGN §11): create, signal, delete,
//! stats and list. A container's processes (its init and execs) are started
//! with [`Guest::spawn`] and a [`crate::ContainerTarget`].

use std::time::Duration;

use uvm_proto::gcs;

use crate::{Guest, GuestError};

pub use gcs::{
    container_info::Status as ContainerStatus, container_rootfs, ContainerInfo, ContainerRootfs,
    ContainerStatistics, CreateContainerRequest, CreateContainerResponse, OverlayRootfs,
};

/// Bound on the agent deleting a container (killing what is left of it,
/// unmounting, removing its cgroup).
pub const DELETE_CONTAINER_TIMEOUT: Duration = Duration::from_secs(20);

impl Guest {
    fn require_containers(&self) -> Result<(), GuestError> {
        if self.capabilities().is_some_and(|c| c.containers) {
            Ok(())
        } else {
            Err(GuestError::FailedPrecondition(
                "the guest agent does not run containers (no `containers` capability)",
            ))
        }
    }

    /// Creates a container in the guest: mounts its rootfs, makes its
    /// cgroup and keeps its spec. It starts with an init [`Guest::spawn`].
    pub async fn create_container(
        &self,
        req: CreateContainerRequest,
        timeout: Duration,
    ) -> Result<CreateContainerResponse, GuestError> {
        self.require_containers()?;
        self.call("create container", timeout, |mut c| async move {
            c.create_container(req).await
        })
        .await
    }

    /// Sends `signal` to the container's init, or to all its processes.
    pub async fn signal_container(
        &self,
        id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), GuestError> {
        self.require_containers()?;
        let req = gcs::SignalContainerRequest {
            id: id.to_string(),
            signal,
            all,
        };
        self.call("signal container", self.rpc_timeout(), |mut c| async move {
            c.signal_container(req).await
        })
        .await
        .map(drop)
    }

    /// Deletes the container: kills what is left, removes its mounts,
    /// cgroup and scratch in the guest.
    pub async fn delete_container(&self, id: &str) -> Result<(), GuestError> {
        self.require_containers()?;
        let req = gcs::DeleteContainerRequest { id: id.to_string() };
        self.call(
            "delete container",
            DELETE_CONTAINER_TIMEOUT,
            |mut c| async move { c.delete_container(req).await },
        )
        .await
        .map(drop)
    }

    /// The container's cgroup figures.
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStatistics, GuestError> {
        self.require_containers()?;
        let req = gcs::ContainerStatsRequest { id: id.to_string() };
        self.call("container stats", self.rpc_timeout(), |mut c| async move {
            c.container_stats(req).await
        })
        .await
    }

    /// Every container the agent knows, with its status.
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, GuestError> {
        self.require_containers()?;
        self.call("list containers", self.rpc_timeout(), |mut c| async move {
            c.list_containers(gcs::ListContainersRequest {}).await
        })
        .await
        .map(|r| r.containers)
    }
}
