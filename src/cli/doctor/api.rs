//! The API server: which credentials moor would use (the config's `kubernetes.kubeconfig`,
//! in-cluster, or `KUBECONFIG`/`~/.kube/config`, as the daemon infers them) and whether
//! they grant the verbs moor needs, asked of the API server itself with one
//! SelfSubjectAccessReview per verb. No credentials is a `skip` that says what the node
//! loses; a verb denied is a `warn` (Events, pods, evictions: moor works, but says less or
//! evicts nothing) or a `fail` (persistentvolumes, for the local driver's PVs).

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};

use super::{Row, Status};
use crate::config::Config;

/// One thing moor asks of the API server.
pub struct Need {
    /// The resource.
    pub resource: &'static str,
    /// Its subresource, or empty.
    pub sub: &'static str,
    /// The verbs.
    pub verbs: &'static [&'static str],
    /// The drivers that need it (empty: every driver).
    pub drivers: &'static [&'static str],
    /// A denied verb fails those drivers (else it warns).
    pub fails: bool,
    /// What is lost without it.
    pub lost: &'static str,
}

const fn need(
    resource: &'static str,
    sub: &'static str,
    verbs: &'static [&'static str],
    drivers: &'static [&'static str],
    fails: bool,
    lost: &'static str,
) -> Need {
    Need {
        resource,
        sub,
        verbs,
        drivers,
        fails,
        lost,
    }
}

/// What moor asks of the API server.
pub const NEEDS: &[Need] = &[
    need(
        "events",
        "",
        &["create", "patch"],
        &[],
        false,
        "no Events on pods, PVs and the node",
    ),
    need(
        "pods",
        "",
        &["get", "list", "watch"],
        &[],
        false,
        "pods stay Unknown: no dead-mount report per pod, no orphan cleaning",
    ),
    need(
        "pods",
        "eviction",
        &["create"],
        &[],
        false,
        "heal.evict-pods cannot evict",
    ),
    need(
        "persistentvolumes",
        "",
        &["get", "list", "watch", "create", "patch", "delete"],
        &["local"],
        true,
        "local PVs are not published or released",
    ),
    need(
        "persistentvolumeclaims",
        "",
        &["get"],
        &[],
        false,
        "volume statistics lack the claim's name",
    ),
    need(
        "nodes",
        "",
        &["get"],
        &[],
        false,
        "node labels are not read",
    ),
];

/// Every row of this area (blocks up to ~10 s on an API server that does not answer).
pub fn check(cfg: &Config, _drivers: &[String]) -> Vec<Row> {
    if !cfg.kubernetes.enabled {
        return vec![Row::new("api credentials", &[], Status::Skip).detail(
            "kubernetes.mode: off: no Events, every pod Unknown (nothing evicted or cleaned on moor's own), local PVs not published",
        )];
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![
                Row::new("api credentials", &[], Status::Skip).detail(format!("no runtime: {e}")),
            ];
        }
    };
    rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(10), gather(cfg)).await {
            Ok(rows) => rows,
            Err(_) => vec![
                Row::new("api credentials", &[], Status::Warn)
                    .detail("the API server did not answer within 10 s")
                    .fix("check the node's route to the API server"),
            ],
        }
    })
}

/// The credentials the daemon would use, and where they come from; `Ok(None)` when none.
async fn credentials(cfg: &Config) -> Result<Option<(kube::Config, String)>, String> {
    if let Some(p) = &cfg.kubernetes.kubeconfig {
        let kc =
            kube::config::Kubeconfig::read_from(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let c = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| format!("{}: {e}", p.display()))?;
        return Ok(Some((c, format!("kubernetes.kubeconfig {}", p.display()))));
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kube/config")))
        .filter(|p| p.is_file());
    if !in_cluster && kubeconfig.is_none() {
        return Ok(None);
    }
    let c = kube::Config::infer().await.map_err(|e| e.to_string())?;
    let from = if in_cluster {
        "in-cluster service account".to_owned()
    } else {
        format!("kubeconfig {}", kubeconfig.unwrap_or_default().display())
    };
    Ok(Some((c, from)))
}

async fn gather(cfg: &Config) -> Vec<Row> {
    let row = Row::new("api credentials", &[], Status::Ok);
    let (kc, from) = match credentials(cfg).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return vec![Row { status: Status::Skip, ..row }.detail(
                "none (no kubernetes.kubeconfig, not in a pod, no KUBECONFIG or ~/.kube/config): no Events, every pod Unknown, so nothing is evicted or cleaned on moor's own; local PVs not published",
            )];
        }
        Err(e) => {
            return vec![
                Row {
                    status: Status::Fail,
                    ..row
                }
                .detail(format!("credentials unusable: {e}"))
                .fix("fix kubernetes.kubeconfig, or set kubernetes.mode: off"),
            ];
        }
    };
    let server = kc.cluster_url.to_string();
    let client = match kube::Client::try_from(kc) {
        Ok(c) => c,
        Err(e) => {
            return vec![
                Row {
                    status: Status::Fail,
                    ..row
                }
                .detail(format!("{from}: {e}")),
            ];
        }
    };
    let api: kube::Api<SelfSubjectAccessReview> = kube::Api::all(client);
    let mut answers = Vec::new();
    for n in NEEDS {
        let mut got = Vec::new();
        for verb in n.verbs {
            got.push((*verb, review(&api, n.resource, n.sub, verb).await));
        }
        answers.push(got);
    }
    let mut rows = vec![row.detail(format!("{from}, server {server}"))];
    rows.extend(rbac_rows(&answers));
    rows
}

async fn review(
    api: &kube::Api<SelfSubjectAccessReview>,
    resource: &str,
    sub: &str,
    verb: &str,
) -> Result<bool, String> {
    let r = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                resource: Some(resource.into()),
                subresource: (!sub.is_empty()).then(|| sub.into()),
                verb: Some(verb.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    api.create(&kube::api::PostParams::default(), &r)
        .await
        .map(|a| a.status.is_some_and(|s| s.allowed))
        .map_err(|e| e.to_string())
}

/// One row per [`NEEDS`] entry from the answers, in the same order (`answers[i]` holds
/// entry i's (verb, allowed) pairs).
pub fn rbac_rows(answers: &[Vec<(&str, Result<bool, String>)>]) -> Vec<Row> {
    NEEDS
        .iter()
        .zip(answers)
        .map(|(n, got)| {
            let name = if n.sub.is_empty() {
                n.resource.to_owned()
            } else {
                format!("{}/{}", n.resource, n.sub)
            };
            let row = Row::new(format!("rbac {name}"), n.drivers, Status::Ok);
            let denied: Vec<&str> = got
                .iter()
                .filter(|(_, a)| !matches!(a, Ok(true)))
                .map(|(v, _)| *v)
                .collect();
            if denied.is_empty() {
                return row.detail(format!("allowed: {}", n.verbs.join(", ")));
            }
            let errors: Vec<&str> = got
                .iter()
                .filter_map(|(_, a)| a.as_ref().err().map(String::as_str))
                .collect();
            let why = errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            Row {
                status: if n.fails { Status::Fail } else { Status::Warn },
                ..row
            }
            .detail(format!("denied: {}{why}: {}", denied.join(", "), n.lost))
            .fix(format!(
                "grant {} on {name} to moor's service account (packaging/examples/rbac.yaml)",
                denied.join(", ")
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fx;
    use super::*;

    #[test]
    fn kubernetes_off_is_a_skip_that_says_what_is_lost() {
        let mut fx = Fx::new();
        fx.inputs.cfg.kubernetes.enabled = false;
        let rows = check(&fx.inputs.cfg, &[]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, Status::Skip);
        assert!(rows[0].detail.contains("nothing evicted"), "{:?}", rows[0]);
    }

    #[test]
    fn an_unreadable_kubeconfig_fails_naming_the_file() {
        let mut fx = Fx::new();
        fx.inputs.cfg.kubernetes.kubeconfig = Some(fx.path("kc.yaml"));
        let rows = check(&fx.inputs.cfg, &[]);
        assert_eq!(rows[0].status, Status::Fail, "{rows:?}");
        assert!(rows[0].detail.contains("kc.yaml"), "{rows:?}");
    }

    /// A fake API server answering SelfSubjectAccessReviews: every verb allowed but
    /// `delete` and `patch` on events; it counts the reviews it answered.
    fn fake_api_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                    axum::routing::post(move |body: String| {
                        let seen = seen.clone();
                        async move {
                            seen.fetch_add(1, Ordering::SeqCst);
                            let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
                            let a = &v["spec"]["resourceAttributes"];
                            let allowed = !(a["verb"] == "delete"
                                || (a["verb"] == "patch" && a["resource"] == "events"));
                            v["status"] = serde_json::json!({ "allowed": allowed });
                            (
                                [(axum::http::header::CONTENT_TYPE, "application/json")],
                                v.to_string(),
                            )
                        }
                    }),
                );
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
        (port, count)
    }

    #[test]
    fn rbac_is_asked_of_the_api_server_one_review_per_verb() {
        let (port, count) = fake_api_server();
        let mut fx = Fx::new();
        let kc = fx.path("kubeconfig");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: t0k3n\n"
            ),
        )
        .unwrap();
        fx.inputs.cfg.kubernetes.kubeconfig = Some(kc);
        let rows = check(&fx.inputs.cfg, &[]);
        let r = Fx::row(&rows, "api credentials");
        assert_eq!(r.status, Status::Ok, "{rows:#?}");
        assert!(r.detail.contains(&format!("127.0.0.1:{port}")), "{r:?}");
        let pv = Fx::row(&rows, "rbac persistentvolumes");
        assert_eq!(pv.status, Status::Fail, "{pv:?}");
        assert!(pv.detail.starts_with("denied: delete"), "{pv:?}");
        let ev = Fx::row(&rows, "rbac events");
        assert_eq!(ev.status, Status::Warn);
        assert!(ev.fix.contains("grant patch on events"), "{ev:?}");
        assert_eq!(Fx::row(&rows, "rbac pods/eviction").status, Status::Ok);
        let verbs: usize = NEEDS.iter().map(|n| n.verbs.len()).sum();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), verbs);
    }

    #[test]
    fn denied_verbs_are_named_with_the_grant_and_only_pvs_fail() {
        let all = |ok: bool| -> Vec<Vec<(&str, Result<bool, String>)>> {
            NEEDS
                .iter()
                .map(|n| n.verbs.iter().map(|v| (*v, Ok(ok))).collect())
                .collect()
        };
        let rows = rbac_rows(&all(true));
        assert_eq!(rows.len(), NEEDS.len());
        assert!(rows.iter().all(|r| r.status == Status::Ok), "{rows:?}");
        let mut answers = all(true);
        answers[0][1].1 = Ok(false);
        answers[3][4].1 = Err("forbidden".into());
        let rows = rbac_rows(&answers);
        let r = Fx::row(&rows, "rbac events");
        assert_eq!(r.status, Status::Warn);
        assert!(
            r.detail.starts_with("denied: patch") && r.fix.contains("grant patch on events"),
            "{r:?}"
        );
        let r = Fx::row(&rows, "rbac persistentvolumes");
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.drivers, ["local"]);
        assert!(r.detail.contains("(forbidden)"), "{r:?}");
        assert_eq!(Fx::row(&rows, "rbac pods/eviction").status, Status::Ok);
    }
}
