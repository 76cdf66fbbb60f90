//! One direction of a link: frames from one peer, through the pipeline, to the other.
//!
//! The relay is where bad input meets policy. From the client, a malformed or over-long frame is
//! answered with a JSON-RPC error (carrying the request id whenever it can be salvaged) and the
//! session carries on. From the server, such a frame is logged and counted but never forwarded
//! (it would corrupt the client's stream); if it can be tied to a pending request, that request
//! is answered with an error instead of being left to hang.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncRead;
use tokio_util::codec::FramedRead;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Frame, Kind, Message, ParseError, RequestId, salvage};
use crate::session::Session;
use crate::transport::lines::{Line, LineDecoder};

use super::outbox::Outbox;
use super::pipeline::{Context, Pipeline, Verdict};

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The peer closed its side (EOF).
    Eof,
    /// Reading from the peer failed.
    ReadError(std::io::Error),
    /// The receiving peer's writer is gone, so nothing more can be delivered.
    ReceiverClosed,
}

/// Moves messages from one peer to the other through the pipeline.
#[derive(Debug)]
pub struct Relay {
    /// Which way this relay moves messages.
    pub direction: Direction,
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    /// The session.
    pub session: Arc<Session>,
    /// Where answers to the sending peer go.
    pub to_sender: Arc<Outbox>,
    /// Where forwarded messages go.
    pub to_receiver: Arc<Outbox>,
    /// Longest frame accepted, in bytes.
    pub max_message_size: usize,
}

impl Relay {
    /// Reads `input` until EOF or until the receiver is gone.
    pub async fn run<R: AsyncRead>(self, input: R) -> RelayEnd {
        let mut frames = std::pin::pin!(FramedRead::new(
            input,
            LineDecoder::new(self.max_message_size)
        ));
        while let Some(line) = frames.next().await {
            let delivered = match line {
                Ok(Line::Frame(bytes)) => self.on_frame(bytes).await,
                Ok(Line::TooLong { len, head, tail }) => self.on_too_long(len, &head, &tail).await,
                Err(e) => return RelayEnd::ReadError(e),
            };
            if delivered.is_err() {
                return RelayEnd::ReceiverClosed;
            }
        }
        RelayEnd::Eof
    }

    async fn on_frame(&self, bytes: Bytes) -> Result<(), Undeliverable> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        match Message::parse_frame(bytes.clone()) {
            Ok(Frame::Single(msg)) => self.on_message(msg).await,
            Ok(Frame::Batch(members)) => self.on_batch(members).await,
            Err(e) => {
                self.pipeline.metrics().malformed(self.direction);
                self.on_bad_frame(&e, &bytes).await
            }
        }
    }

    async fn on_message(&self, msg: Message) -> Result<(), Undeliverable> {
        let cx = Context {
            direction: self.direction,
            session: &self.session,
        };
        let id = msg.id().cloned();
        let is_request = msg.kind() == Kind::Request;
        match self.pipeline.process(msg, cx).await {
            Verdict::Forward(msg) => {
                if self.to_receiver.send(msg).await.is_ok() {
                    self.pipeline.metrics().forwarded(self.direction);
                    return Ok(());
                }
                // The receiver is gone: answer the request now rather than never.
                if let (true, Some(id)) = (is_request, id) {
                    self.session.pending(self.direction).remove(&id);
                    let error = super::tracker::receiver_gone(self.direction);
                    let _ = self
                        .to_sender
                        .send(Message::error_response(Some(&id), &error))
                        .await;
                }
                Err(Undeliverable)
            }
            Verdict::Respond(answer) => {
                self.pipeline.metrics().answered_by_proxy(self.direction);
                // If the sender is gone too, its reader will end the session.
                let _ = self.to_sender.send(answer).await;
                Ok(())
            }
            Verdict::Drop => Ok(()),
        }
    }

    async fn on_batch(
        &self,
        members: Vec<Result<Message, ParseError>>,
    ) -> Result<(), Undeliverable> {
        let mut expect: Vec<RequestId> = Vec::new();
        let mut ready = Vec::new();
        let mut valid = Vec::with_capacity(members.len());
        for member in members {
            match member {
                Ok(msg) if msg.kind() == Kind::Request => {
                    let Some(id) = msg.id().cloned() else {
                        continue;
                    };
                    if expect.contains(&id) {
                        let error = ProxyError::new(
                            ErrorCode::DuplicateRequestId,
                            "the batch repeats this request id",
                        );
                        ready.push(error.to_response(Some(&id)));
                    } else {
                        expect.push(id);
                        valid.push(msg);
                    }
                }
                Ok(msg) => valid.push(msg),
                Err(e) => {
                    self.pipeline.metrics().malformed(self.direction);
                    ready.push(e.to_response().raw().clone());
                }
            }
        }
        // Best effort: the sender may have gone, in which case its reader ends the session.
        let _ = self.to_sender.open_batch(expect, ready).await;
        for msg in valid {
            self.on_message(msg).await?;
        }
        Ok(())
    }

    async fn on_bad_frame(&self, error: &ParseError, bytes: &Bytes) -> Result<(), Undeliverable> {
        let id = error
            .id()
            .cloned()
            .or_else(|| salvage::find_id(bytes, bytes));
        match self.direction {
            Direction::ClientToServer => {
                tracing::warn!(%error, ?id, "malformed message from the client");
                let answer = match (error, id) {
                    (ParseError::Json(_), Some(id)) => {
                        Message::error_response(Some(&id), &error.to_proxy_error())
                    }
                    _ => error.to_response(),
                };
                self.pipeline.metrics().answered_by_proxy(self.direction);
                let _ = self.to_sender.send(answer).await;
                Ok(())
            }
            Direction::ServerToClient => {
                let preview = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                tracing::warn!(%error, ?id, %preview, "server wrote something that is not a JSON-RPC message; not forwarded");
                let error = ProxyError::new(
                    ErrorCode::InvalidUpstreamResponse,
                    format!("the MCP server's response was not valid JSON-RPC: {error}"),
                );
                self.fail_pending_request(id, error).await
            }
        }
    }

    async fn on_too_long(&self, len: usize, head: &[u8], tail: &[u8]) -> Result<(), Undeliverable> {
        self.pipeline.metrics().oversized(self.direction);
        let id = salvage::find_id(head, tail);
        let limit = self.max_message_size;
        let (code, what) = match self.direction {
            Direction::ClientToServer => (ErrorCode::MessageTooLarge, "message"),
            Direction::ServerToClient => (
                ErrorCode::InvalidUpstreamResponse,
                "the MCP server's response",
            ),
        };
        tracing::warn!(
            len,
            limit,
            ?id,
            direction = self.direction.as_str(),
            "discarded an over-long message"
        );
        let error = ProxyError::new(
            code,
            format!(
                "{what} of {len} bytes exceeds the limit of {limit} bytes (--max-message-size)"
            ),
        )
        .with("limit", limit)
        .with("size", len);
        match self.direction {
            Direction::ClientToServer => {
                self.pipeline.metrics().answered_by_proxy(self.direction);
                let _ = self
                    .to_sender
                    .send(Message::error_response(id.as_ref(), &error))
                    .await;
                Ok(())
            }
            Direction::ServerToClient => self.fail_pending_request(id, error).await,
        }
    }

    /// Answers the client's pending request `id` (if it is one) with `error`.
    async fn fail_pending_request(
        &self,
        id: Option<RequestId>,
        error: ProxyError,
    ) -> Result<(), Undeliverable> {
        let Some(id) = id else { return Ok(()) };
        if self
            .session
            .pending(self.direction.reverse())
            .remove(&id)
            .is_none()
        {
            return Ok(());
        }
        self.pipeline.metrics().answered_by_proxy(self.direction);
        self.to_receiver
            .send(Message::error_response(Some(&id), &error))
            .await
            .map_err(|_| Undeliverable)
    }
}

/// The receiving peer can no longer be written to.
#[derive(Debug)]
struct Undeliverable;
