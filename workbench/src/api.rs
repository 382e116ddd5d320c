//! Calls to the gateway with the logged-in human's token: JSON requests,
//! downloads, and streamed chat completions.

use serde_json::{json, Value};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, ReadableStreamDefaultReader, Request, RequestInit, Response};

use crate::sse::{chat_delta, Delta, Parser};
use crate::view::error_text;

const TOKEN_KEY: &str = "lattice.workbench.token";

fn js_err(e: JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "the browser refused the request".into())
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok()?
}

/// The token kept for this tab, if any.
pub fn saved_token() -> Option<String> {
    storage()?.get_item(TOKEN_KEY).ok()?
}

pub fn save_token(token: Option<&str>) {
    if let Some(s) = storage() {
        let _ = match token {
            Some(t) => s.set_item(TOKEN_KEY, t),
            None => s.remove_item(TOKEN_KEY),
        };
    }
}

async fn fetch(
    token: &str,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Response, String> {
    let init = RequestInit::new();
    init.set_method(method);
    let headers = Headers::new().map_err(js_err)?;
    headers
        .set("authorization", &format!("Bearer {token}"))
        .map_err(js_err)?;
    if let Some(b) = body {
        headers
            .set("content-type", "application/json")
            .map_err(js_err)?;
        init.set_body(&JsValue::from_str(&b.to_string()));
    }
    init.set_headers(&headers);
    let req = Request::new_with_str_and_init(url, &init).map_err(js_err)?;
    let window = web_sys::window().ok_or("no window")?;
    let resp = JsFuture::from(window.fetch_with_request(&req))
        .await
        .map_err(|e| format!("the gateway cannot be reached: {}", js_err(e)))?;
    resp.dyn_into::<Response>().map_err(js_err)
}

async fn text(resp: &Response) -> Result<String, String> {
    let t = JsFuture::from(resp.text().map_err(js_err)?)
        .await
        .map_err(js_err)?;
    Ok(t.as_string().unwrap_or_default())
}

fn parse(t: &str) -> Value {
    serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string()))
}

/// A JSON call; a non-2xx reply is an error with the gateway's message.
pub async fn call(
    token: &str,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let resp = fetch(token, method, url, body).await?;
    let t = text(&resp).await?;
    let v = parse(&t);
    if resp.ok() {
        Ok(v)
    } else {
        Err(error_text(resp.status(), &v))
    }
}

pub async fn get(token: &str, url: &str) -> Result<Value, String> {
    call(token, "GET", url, None).await
}

pub async fn post(token: &str, url: &str, body: &Value) -> Result<Value, String> {
    call(token, "POST", url, Some(body)).await
}

/// Fetches `url` and hands it to the browser as a file download.
pub async fn download(token: &str, url: &str, filename: &str, mime: &str) -> Result<(), String> {
    let resp = fetch(token, "GET", url, None).await?;
    let t = text(&resp).await?;
    if !resp.ok() {
        return Err(error_text(resp.status(), &parse(&t)));
    }
    let parts = js_sys::Array::of1(&JsValue::from_str(&t));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts).map_err(js_err)?;
    let href = web_sys::Url::create_object_url_with_blob(&blob).map_err(js_err)?;
    let doc = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?;
    let a: web_sys::HtmlAnchorElement = doc.create_element("a").map_err(js_err)?.unchecked_into();
    a.set_href(&href);
    a.set_download(filename);
    a.click();
    let _ = web_sys::Url::revoke_object_url(&href);
    Ok(())
}

/// A streamed chat completion: `on_text` gets each piece as it arrives.
pub async fn chat_stream(
    token: &str,
    model: &str,
    messages: &Value,
    mut on_text: impl FnMut(&str),
) -> Result<(), String> {
    let body = json!({"model": model, "messages": messages, "stream": true});
    let resp = fetch(token, "POST", "/v1/chat/completions", Some(&body)).await?;
    if !resp.ok() {
        let t = text(&resp).await?;
        return Err(error_text(resp.status(), &parse(&t)));
    }
    let reader: ReadableStreamDefaultReader = resp
        .body()
        .ok_or("the answer has no body")?
        .get_reader()
        .unchecked_into();
    let mut parser = Parser::default();
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(js_err)?;
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        if done {
            return Ok(());
        }
        let value = js_sys::Reflect::get(&chunk, &"value".into()).map_err(js_err)?;
        let bytes = js_sys::Uint8Array::new(&value).to_vec();
        for data in parser.push(&bytes) {
            match chat_delta(&data)? {
                Delta::Text(t) => on_text(&t),
                Delta::Done => return Ok(()),
                Delta::Nothing => {}
            }
        }
    }
}
