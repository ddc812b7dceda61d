//! openraft's network over kiln's QUIC transport: each RPC is one [`CoordinatorRequest::Raft`] carrying
//! openraft's own message as JSON, sent with the coordinator's certificate to the peer's
//! address from the membership.

use super::{NodeId, TypeConfig};
use crate::node::peers::Pool;
use kiln_shared::api::{CoordinatorRequest, CoordinatorResponse, RaftRpc};
use kiln_shared::transport::TransportError;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;

pub struct Network {
    pool: Pool,
}

impl Network {
    pub fn new(pool: Pool) -> Network {
        Network { pool }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: Result<SocketAddr, String>,
    pool: Pool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let addr = node.addr.parse().map_err(|e| format!("coordinator {target} has a bad address {:?}: {e}", node.addr));
        PeerClient { target, addr, pool: self.pool.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

impl PeerClient {
    async fn send<Req, Resp, E>(&self, rpc: RaftRpc, req: &Req, option: &RPCOption) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let addr = self.addr.clone().map_err(|e| RPCError::Unreachable(Unreachable::new(&Failure(e))))?;
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self.pool.coordinator(addr, &CoordinatorRequest::Raft { rpc, json }, option.hard_ttl()).await;
        let bytes = match answer {
            Ok(CoordinatorResponse::Raft { json }) => json,
            Ok(other) => return Err(RPCError::Network(NetworkError::new(&Failure(format!("unexpected answer {other:?}"))))),
            // Unreachable makes openraft back off (half a second) instead of retrying at once:
            // for a peer that is down. A late answer is not one: the TTL is the heartbeat
            // interval, which a loaded follower appending a large batch can miss, and backing
            // off then stalls every commit (5,000 polling agents made it 30 commits a second).
            Err(e @ (TransportError::Connect { .. } | TransportError::Closed(_))) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let result: Result<Resp, E> = serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(RaftRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>> {
        self.send(RaftRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(RaftRpc::Vote, &rpc, &option).await
    }
}

/// The receiving side: runs the RPC on the local Raft and answers openraft's result as JSON.
pub async fn serve(raft: &openraft::Raft<TypeConfig>, rpc: RaftRpc, json: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    match rpc {
        RaftRpc::AppendEntries => serde_json::to_vec(&raft.append_entries(serde_json::from_slice(json)?).await),
        RaftRpc::Vote => serde_json::to_vec(&raft.vote(serde_json::from_slice(json)?).await),
        RaftRpc::InstallSnapshot => serde_json::to_vec(&raft.install_snapshot(serde_json::from_slice(json)?).await),
    }
}
