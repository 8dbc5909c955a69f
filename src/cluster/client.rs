//! The daemon's one API client: credentials found once (`kubernetes.kubeconfig`, else
//! in-cluster, `KUBECONFIG`, `~/.kube/config`), and every request it makes counted in
//! `moor_api_requests_total{verb,resource}` by a tower layer under the client, so a watch
//! re-connect or a retry is counted like any other request.
//!
//! Invariant: every request of every component that uses the client built here passes the
//! counting layer (it is the outermost layer of the client's stack).

use std::task::{Context, Poll};

use axum::http::{Method, Request, Uri};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::ApiRequestLabels;

/// No client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `kubernetes.mode: off`.
    #[error("kubernetes.mode is off")]
    Off,
    /// No usable credentials.
    #[error(
        "no Kubernetes credentials (kubernetes.kubeconfig, in-cluster, KUBECONFIG or ~/.kube/config): {0}"
    )]
    Credentials(String),
    /// The credentials were found but the client could not be built.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// Where the credentials come from (the config's `kubernetes:` section; this module does
/// not name the config, which names the local PV module, which uses the watches here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Look for credentials at all (`kubernetes.mode: auto`).
    pub enabled: bool,
    /// An explicit kubeconfig.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Record Events.
    pub events: bool,
}

/// Builds the client from `cfg`, counting into `counter`.
pub async fn connect(
    cfg: &Settings,
    counter: &Family<ApiRequestLabels, Counter>,
) -> Result<kube::Client, ConnectError> {
    if !cfg.enabled {
        return Err(ConnectError::Off);
    }
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ConnectError::Credentials(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| ConnectError::Credentials(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ConnectError::Credentials(e.to_string()))?,
    };
    client_from(config, counter)
}

/// A counted client from a client config (tests point it at a fake API server).
pub fn client_from(
    mut config: kube::Config,
    counter: &Family<ApiRequestLabels, Counter>,
) -> Result<kube::Client, ConnectError> {
    // kube's own retry of 429/503/504 sits below this layer, so its requests would go
    // uncounted; and a 429 on an eviction is a PodDisruptionBudget's answer to report,
    // not to retry at once. The watches back off themselves (`watch`), an Event that
    // fails is counted `failed`.
    config.default_retry = false;
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| ConnectError::Client(e.to_string()))?;
    Ok(builder
        .with_layer(&CountLayer {
            counter: counter.clone(),
        })
        .build())
}

/// Counts each request by verb and resource.
#[derive(Clone)]
pub struct CountLayer {
    counter: Family<ApiRequestLabels, Counter>,
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counter: self.counter.clone(),
        }
    }
}

/// The counting service (see [`CountLayer`]).
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    counter: Family<ApiRequestLabels, Counter>,
}

impl<S, B> tower::Service<Request<B>> for Counted<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (verb, resource) = classify(req.method(), req.uri());
        self.counter
            .get_or_create(&ApiRequestLabels {
                verb: verb.into(),
                resource,
            })
            .inc();
        self.inner.call(req)
    }
}

/// A request's verb (`get`, `list`, `watch`, `create`, `patch`, `update`, `delete`) and
/// resource (`pods`, `pods/eviction`, `events`, …) from its method and path, as the API
/// server's audit log names them.
pub fn classify(method: &Method, uri: &Uri) -> (&'static str, String) {
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest: &[&str] = match segs.first() {
        Some(&"api") => segs.get(2..).unwrap_or_default(),
        Some(&"apis") => segs.get(3..).unwrap_or_default(),
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        r => r,
    };
    let (resource, named) = match rest {
        [] => ("other".to_owned(), false),
        [r] => ((*r).to_owned(), false),
        [r, _name] => ((*r).to_owned(), true),
        [r, _name, sub, ..] => (format!("{r}/{sub}"), true),
    };
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_like_the_audit_log() {
        let c = |m: Method, u: &str| {
            let (v, r) = classify(&m, &u.parse().unwrap());
            format!("{v} {r}")
        };
        assert_eq!(
            c(
                Method::GET,
                "/api/v1/pods?fieldSelector=spec.nodeName%3Dn&watch=true&resourceVersion=5"
            ),
            "watch pods"
        );
        for (m, u, want) in [
            (Method::GET, "/api/v1/pods?fieldSelector=x", "list pods"),
            (Method::GET, "/api/v1/namespaces/a/pods/web-0", "get pods"),
            (
                Method::POST,
                "/api/v1/namespaces/a/pods/web-0/eviction?",
                "create pods/eviction",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/default/events?",
                "create events",
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/a/events/web-0.1a",
                "patch events",
            ),
            (
                Method::GET,
                "/api/v1/persistentvolumes/pv-1",
                "get persistentvolumes",
            ),
            (
                Method::GET,
                "/apis/storage.k8s.io/v1/csidrivers",
                "list csidrivers",
            ),
            (Method::GET, "/api/v1/namespaces", "list namespaces"),
            (Method::GET, "/api/v1/namespaces/a", "get namespaces"),
        ] {
            assert_eq!(c(m, u), want, "{u}");
        }
    }
}
