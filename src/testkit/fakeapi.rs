//! A fake Kubernetes API server on 127.0.0.1 for tests: pods, PVs, claims, nodes and
//! Events in memory, list and chunked watch (resourceVersion resume, bookmarks, 410 Gone
//! once on demand), Event create/patch, pod eviction with scripted answers, and a log of
//! every request (method, path, query, body) counted by verb and resource. A "restart"
//! ends every open watch; "down" answers 503 to everything until it is up again.
//!
//! Invariant: every object change gets the next resourceVersion and is kept in the
//! history, so a watch resumed from any version since the last compaction sees exactly
//! the changes after it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Decoded query.
    pub query: String,
    /// Body.
    pub body: String,
    /// `verb resource` as the client's counter names it.
    pub verb_resource: String,
}

#[derive(Default)]
struct State {
    /// resource → key (`ns/name` or `name`) → object.
    objs: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// (rv, resource, type, object).
    history: Vec<(u64, String, String, serde_json::Value)>,
    rv: u64,
    /// Watches from before this version get 410 (set by `compact`).
    compacted: u64,
    seen: Vec<Seen>,
    evict_answers: BTreeMap<String, u16>,
    /// (resource, key) of each object a DELETE request removed.
    deleted: Vec<(String, String)>,
    down: bool,
    generation: u64,
}

/// The fake server.
pub struct FakeApi {
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<u64>,
    /// Its address (`http://127.0.0.1:port`).
    pub url: String,
}

fn key_of(v: &serde_json::Value) -> String {
    let m = &v["metadata"];
    match m["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", m["name"].as_str().unwrap_or_default()),
        _ => m["name"].as_str().unwrap_or_default().to_owned(),
    }
}

fn decode(q: &str) -> String {
    let b = q.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(c) => {
                        out.push(c);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param<'a>(q: &'a str, k: &str) -> Option<&'a str> {
    q.split('&')
        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
}

fn json(code: u16, v: &serde_json::Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap_or_default()
}

fn status(code: u16, reason: &str, msg: &str) -> Response {
    json(
        code,
        &serde_json::json!({"apiVersion":"v1","kind":"Status","status":"Failure","code":code,"reason":reason,"message":msg}),
    )
}

/// Whether `o` matches the list's selectors (`spec.nodeName=…` fields, `k=v,…` labels).
fn matches(o: &serde_json::Value, q: &str) -> bool {
    if let Some(f) = param(q, "fieldSelector") {
        for kv in f.split(',') {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let got = match k {
                "spec.nodeName" => o["spec"]["nodeName"].as_str(),
                "metadata.name" => o["metadata"]["name"].as_str(),
                "metadata.namespace" => o["metadata"]["namespace"].as_str(),
                _ => None,
            };
            if got != Some(v) {
                return false;
            }
        }
    }
    if let Some(l) = param(q, "labelSelector") {
        for kv in l.split(',') {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            if o["metadata"]["labels"][k].as_str() != Some(v) {
                return false;
            }
        }
    }
    true
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "pods" => "Pod",
        "persistentvolumes" => "PersistentVolume",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "events" => "Event",
        "nodes" => "Node",
        _ => "Unknown",
    }
}

impl FakeApi {
    /// Starts the server on the current runtime.
    pub async fn start() -> Arc<FakeApi> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (changed, _) = tokio::sync::watch::channel(0);
        let me = Arc::new(FakeApi {
            state: Mutex::new(State::default()),
            changed,
            url: format!("http://{addr}"),
        });
        let s = me.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                let s = s.clone();
                async move { s.handle(method, uri, headers, body).await }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        me
    }

    /// A client config pointing at it.
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url.parse().unwrap_or_else(|e| panic!("{e}")))
    }

    /// The daemon's cluster over this server (counted client, pod watch, Events when
    /// `events`), for node `node-a`, on the current runtime.
    pub fn cluster(
        &self,
        events: bool,
        timings: crate::cluster::watch::Timings,
    ) -> (
        crate::cluster::Cluster,
        Arc<crate::cluster::pods::PodCache>,
        crate::metrics::ClusterMetrics,
    ) {
        let metrics = crate::metrics::ClusterMetrics::default();
        let client = crate::cluster::client::client_from(self.config(), &metrics.api_requests)
            .unwrap_or_else(|e| panic!("client for the fake API server: {e}"));
        let (c, pods) = crate::cluster::live::KubeCluster::start(
            client,
            crate::cluster::live::Options {
                node: "node-a".into(),
                events,
                tuning: Default::default(),
                timings,
            },
            metrics.clone(),
        );
        (c, pods, metrics)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_locked(
        st: &mut State,
        resource: &str,
        mut v: serde_json::Value,
        kind: &str,
    ) -> serde_json::Value {
        st.rv += 1;
        v["metadata"]["resourceVersion"] = st.rv.to_string().into();
        if v["metadata"]["uid"].is_null() {
            // Unique per object: a PV deleted and created again is a new object.
            v["metadata"]["uid"] = format!("uid-{}-{}", key_of(&v).replace('/', "-"), st.rv).into();
        }
        if v["apiVersion"].is_null() {
            v["apiVersion"] = if resource == "pods/eviction" {
                "policy/v1"
            } else {
                "v1"
            }
            .into();
        }
        v["kind"] = kind_of(resource).into();
        let key = key_of(&v);
        st.objs
            .entry(resource.to_owned())
            .or_default()
            .insert(key, v.clone());
        let rv = st.rv;
        st.history
            .push((rv, resource.to_owned(), kind.to_owned(), v.clone()));
        v
    }

    /// Adds or replaces an object (`resource`: `pods`, `persistentvolumes`, …).
    pub fn put(&self, resource: &str, v: serde_json::Value) -> serde_json::Value {
        let out = {
            let mut st = self.lock();
            let exists = st
                .objs
                .get(resource)
                .is_some_and(|m| m.contains_key(&key_of(&v)));
            Self::put_locked(
                &mut st,
                resource,
                v,
                if exists { "MODIFIED" } else { "ADDED" },
            )
        };
        self.changed.send_modify(|g| *g += 1);
        out
    }

    /// Deletes an object by key (`ns/name` or `name`).
    pub fn delete(&self, resource: &str, key: &str) {
        {
            let mut st = self.lock();
            let Some(v) = st.objs.get_mut(resource).and_then(|m| m.remove(key)) else {
                return;
            };
            st.rv += 1;
            let mut v = v;
            v["metadata"]["resourceVersion"] = st.rv.to_string().into();
            let rv = st.rv;
            st.history
                .push((rv, resource.to_owned(), "DELETED".into(), v));
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// An object by key.
    pub fn get(&self, resource: &str, key: &str) -> Option<serde_json::Value> {
        self.lock().objs.get(resource)?.get(key).cloned()
    }

    /// Every object of a resource.
    pub fn all(&self, resource: &str) -> Vec<serde_json::Value> {
        self.lock()
            .objs
            .get(resource)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// What the eviction of `ns/name` answers (default 201).
    pub fn answer_eviction(&self, key: &str, code: u16) {
        self.lock().evict_answers.insert(key.to_owned(), code);
    }

    /// The keys of the objects of `resource` that DELETE requests removed, in order.
    pub fn deleted_by_requests(&self, resource: &str) -> Vec<String> {
        self.lock()
            .deleted
            .iter()
            .filter(|(r, _)| r == resource)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests so far by `verb resource`.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.lock().seen.iter() {
            *m.entry(s.verb_resource.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Forgets the request log.
    pub fn clear_seen(&self) {
        self.lock().seen.clear();
    }

    /// Ends every open watch (a restart); with `gone`, the history is compacted so a
    /// watch resumed from an older version gets 410 Gone once and must relist.
    pub fn restart(&self, gone: bool) {
        {
            let mut st = self.lock();
            st.generation += 1;
            if gone {
                // Every version a client holds is now too old; a fresh list is not.
                st.rv += 1;
                st.compacted = st.rv;
            }
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// Down (503 to everything, open watches end) or up.
    pub fn set_down(&self, down: bool) {
        {
            let mut st = self.lock();
            st.down = down;
            st.generation += 1;
        }
        self.changed.send_modify(|g| *g += 1);
    }

    async fn handle(
        self: Arc<Self>,
        method: Method,
        uri: Uri,
        _h: HeaderMap,
        body: String,
    ) -> Response {
        let (verb, resource) = crate::cluster::client::classify(&method, &uri);
        let query = decode(uri.query().unwrap_or_default());
        let path = uri.path().to_owned();
        {
            let mut st = self.lock();
            st.seen.push(Seen {
                method: method.to_string(),
                path: path.clone(),
                query: query.clone(),
                body: body.clone(),
                verb_resource: format!("{verb} {resource}"),
            });
            if st.down {
                return status(503, "ServiceUnavailable", "the API server is restarting");
            }
        }
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let rest: Vec<&str> = segs.get(2..).unwrap_or_default().to_vec();
        let (ns, rest) = match rest.as_slice() {
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => {
                (Some((*ns).to_owned()), tail.to_vec())
            }
            r => (None, r.to_vec()),
        };
        let res = rest.first().copied().unwrap_or_default().to_owned();
        let name = rest.get(1).map(|s| (*s).to_owned());
        let key = |n: &str| match &ns {
            Some(ns) => format!("{ns}/{n}"),
            None => n.to_owned(),
        };
        match (verb, rest.get(2).copied()) {
            ("watch", _) => self.watch(&res, &query).await,
            ("list", _) => {
                let st = self.lock();
                let items: Vec<serde_json::Value> = st
                    .objs
                    .get(&res)
                    .map(|m| m.values().filter(|o| matches(o, &query)).cloned().collect())
                    .unwrap_or_default();
                json(
                    200,
                    &serde_json::json!({"apiVersion":"v1","kind":format!("{}List", kind_of(&res)),"metadata":{"resourceVersion":st.rv.to_string()},"items":items}),
                )
            }
            ("get", None) => match self.get(&res, &key(name.as_deref().unwrap_or_default())) {
                Some(o) => json(200, &o),
                None => status(
                    404,
                    "NotFound",
                    &format!("{res} \"{}\" not found", name.unwrap_or_default()),
                ),
            },
            ("create", Some("eviction")) => {
                let k = key(name.as_deref().unwrap_or_default());
                let code = self.lock().evict_answers.get(&k).copied().unwrap_or(201);
                let Some(pod) = self.get("pods", &k) else {
                    return status(404, "NotFound", &format!("pods \"{k}\" not found"));
                };
                let b: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let want = b["deleteOptions"]["preconditions"]["uid"].as_str();
                if want.is_some_and(|u| pod["metadata"]["uid"].as_str() != Some(u)) {
                    return status(409, "Conflict", "Precondition failed: UID in precondition");
                }
                match code {
                    201 => {
                        self.delete("pods", &k);
                        json(
                            201,
                            &serde_json::json!({"apiVersion":"v1","kind":"Status","status":"Success","code":201}),
                        )
                    }
                    429 => status(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    ),
                    c => status(c, "Forbidden", "pods/eviction is forbidden"),
                }
            }
            ("create", None) => {
                let mut v: serde_json::Value = match serde_json::from_str(&body) {
                    Ok(v) => v,
                    Err(e) => return status(400, "BadRequest", &e.to_string()),
                };
                if let Some(ns) = &ns {
                    v["metadata"]["namespace"] = ns.clone().into();
                }
                if self.get(&res, &key_of(&v)).is_some() {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("{res} \"{}\" already exists", key_of(&v)),
                    );
                }
                let out = self.put(&res, v);
                json(201, &out)
            }
            ("patch", None) => {
                let k = key(name.as_deref().unwrap_or_default());
                let Some(mut o) = self.get(&res, &k) else {
                    return status(404, "NotFound", &format!("{res} \"{k}\" not found"));
                };
                let p: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                merge(&mut o, &p);
                json(200, &self.put(&res, o))
            }
            ("delete", None) => {
                let k = key(name.as_deref().unwrap_or_default());
                let Some(o) = self.get(&res, &k) else {
                    return status(404, "NotFound", &format!("{res} \"{k}\" not found"));
                };
                let d: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if let Some(u) = d["preconditions"]["uid"].as_str()
                    && o["metadata"]["uid"].as_str() != Some(u)
                {
                    return status(409, "Conflict", "Precondition failed: UID in precondition");
                }
                self.delete(&res, &k);
                self.lock().deleted.push((res.clone(), k));
                json(200, &o)
            }
            _ => status(405, "MethodNotAllowed", "not served by the fake"),
        }
    }

    async fn watch(self: Arc<Self>, res: &str, query: &str) -> Response {
        let from: u64 = param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = Duration::from_secs(
            param(query, "timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(290),
        );
        let bookmarks = param(query, "allowWatchBookmarks") == Some("true");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(64);
        let (res, query) = (res.to_owned(), query.to_owned());
        let me = self.clone();
        let (generation, compacted) = {
            let st = self.lock();
            (st.generation, st.compacted)
        };
        tokio::spawn(async move {
            if from < compacted {
                let e = serde_json::json!({"type":"ERROR","object":{"apiVersion":"v1","kind":"Status","status":"Failure","code":410,"reason":"Expired","message":"too old resource version"}});
                let _ = tx.send(Ok(format!("{e}\n"))).await;
                return;
            }
            let mut changed = me.changed.subscribe();
            let mut sent = from;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let (batch, gen_now, rv_now) = {
                    let st = me.lock();
                    let batch: Vec<_> = st
                        .history
                        .iter()
                        .filter(|(rv, r, _, o)| *rv > sent && *r == res && matches(o, &query))
                        .map(|(rv, _, t, o)| (*rv, t.clone(), o.clone()))
                        .collect();
                    (batch, st.generation, st.rv)
                };
                if gen_now != generation {
                    return;
                }
                for (rv, t, o) in batch {
                    sent = rv;
                    let line = serde_json::json!({"type": t, "object": o});
                    if tx.send(Ok(format!("{line}\n"))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        if bookmarks {
                            let b = serde_json::json!({"type":"BOOKMARK","object":{"apiVersion":"v1","kind":kind_of(&res),"metadata":{"resourceVersion":rv_now.max(sent).to_string()}}});
                            let _ = tx.send(Ok(format!("{b}\n"))).await;
                        }
                        return;
                    }
                }
            }
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .unwrap_or_default()
    }
}

/// A JSON merge patch (RFC 7386).
fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}
