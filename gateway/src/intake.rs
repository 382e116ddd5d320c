//! Steps 1 and 2 for the doors that route on the body (MCP, `/v1`, the
//! admin API): the body is bounded and read whole, then the caller is
//! authenticated; a refusal at either step is recorded and answered here.
//! Must never: hand a door a body past `server.max_body_bytes` or a call
//! whose caller is unknown.

use lattice_policy::Principal;
use pingora::proxy::Session;
use pingora::Result;

use crate::call::Call;
use crate::enforce;
use crate::error::Rejection;
use crate::respond;
use crate::runtime::{Runtime, Shared};

/// The body and the principal. None: a refusal was recorded and sent.
pub async fn read_and_authenticate(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
) -> Result<Option<(Vec<u8>, Principal)>> {
    let header = |n: &str| {
        session
            .req_header()
            .headers
            .get(n)
            .map(|v| v.as_bytes().to_vec())
    };
    let (content_length, authorization) = (header("content-length"), header("authorization"));
    let peer = crate::identity::mtls::peer(session);
    if !respond::step(node, session, call, runtime, 1).await? {
        return Ok(None);
    }
    if let Err(r) = enforce::check_head(session.req_header(), &runtime.config.server)
        .and_then(|()| enforce::check_content_length(content_length.as_deref(), call.max_body))
    {
        respond::refusal(node, session, call, runtime, r.clone(), &r.message()).await?;
        return Ok(None);
    }
    let mut body = Vec::new();
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) if matches!(e.etype(), pingora::ErrorType::ReadTimedout) => {
                let r = Rejection::RequestTimeout;
                respond::refusal(node, session, call, runtime, r.clone(), &r.message()).await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        body.extend_from_slice(&chunk);
        if body.len() as u64 > call.max_body {
            let r = Rejection::BodyTooLarge {
                limit: call.max_body,
            };
            respond::refusal(node, session, call, runtime, r.clone(), &r.message()).await?;
            return Ok(None);
        }
    }
    if !respond::step(node, session, call, runtime, 2).await? {
        return Ok(None);
    }
    match enforce::authenticate(authorization.as_deref(), peer.as_ref(), runtime, &node.keys) {
        Ok(p) => {
            call.facts.principal = Some(p.clone());
            Ok(Some((body, p)))
        }
        Err(r) => {
            let reason = format!("authentication failed: {}", r.message());
            respond::refusal(node, session, call, runtime, r, &reason).await?;
            Ok(None)
        }
    }
}

/// Resolves when the caller closes its connection (the request body having
/// been read); never otherwise.
pub async fn client_gone(session: &mut Session) {
    if session
        .as_downstream_mut()
        .read_body_or_idle(true)
        .await
        .is_err()
    {
        return;
    }
    std::future::pending::<()>().await;
}
