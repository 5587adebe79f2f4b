//! Failover through a real reverse proxy: nginx (the system package) in front of the primary and
//! the alternate hyper backends, one `server` block each, generated into a temporary directory
//! and run as a child process (`nginx -c <conf> -g 'daemon off;'`, single process, pid and error
//! log in the temporary directory, short proxy timeouts).
//!
//! The outages are made behind the proxy, as in production: the primary *backend* is killed,
//! so nginx answers 502 (refused, or the upstream closed mid-request) or 504 (the upstream
//! timed out), and nginx itself is killed mid-request, so the client's connection is cut. The
//! failover must behave as it does without the proxy: switch, re-send what is safe on the
//! alternate nginx, and say "possibly applied" for what is not.
//!
//! nginx must be installed: `.ci/run` installs it; without it these tests fail, they do not skip.

mod support;

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use support::*;
use tower_failover::{
    DownKind, Endpoints, FailoverErrorKind, FailoverHandle, FailoverLayer, NotResent, Side, SwitchCause,
    SwitchEvent,
};

const NOT_INSTALLED: &str = "nginx is not installed: run .ci/run (it installs it) or apt-get install nginx";

/// Requests under this path get a 1 s `proxy_read_timeout` (10 s elsewhere, so a loaded machine
/// does not turn the 502 cases into 504s).
const SLOW: &str = "/api/data/v9.2/slow/";

/// Finds the nginx binary: `$NGINX`, then `PATH`, then the usual sbin directories (a non-root
/// `PATH` often leaves out `/usr/sbin`, where Debian puts it).
fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NGINX") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "NGINX={} is not a file", path.display());
        return path;
    }
    let from_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let usual = [
        "/usr/sbin",
        "/usr/local/sbin",
        "/sbin",
        "/usr/bin",
        "/usr/local/bin",
        "/usr/local/nginx/sbin",
        "/opt/homebrew/bin",
    ]
    .map(PathBuf::from);
    from_path
        .into_iter()
        .chain(usual)
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{NOT_INSTALLED}"))
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running nginx with one server block per backend; killed and cleaned up on drop.
struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    /// Where each server block listens, in the order of the backends.
    fronts: Vec<SocketAddr>,
}

impl Nginx {
    /// Starts nginx with a server block proxying each backend, and waits until it listens.
    fn start(backends: &[SocketAddr]) -> Nginx {
        let binary = nginx_binary();
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-failover-nginx-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let fronts: Vec<SocketAddr> = backends
            .iter()
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let conf = dir.join("nginx.conf");
        let servers: Vec<_> = fronts.iter().copied().zip(backends.iter().copied()).collect();
        std::fs::write(&conf, config(&dir, &servers)).unwrap();
        let child = Command::new(&binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", binary.display()));
        let mut nginx = Nginx {
            child: Some(child),
            dir,
            fronts,
        };
        nginx.wait_listening();
        nginx
    }

    fn wait_listening(&mut self) {
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nginx exited at start ({status}): {}",
                    std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
                );
            }
            let up = self
                .fronts
                .iter()
                .all(|addr| StdStream::connect_timeout(addr, Duration::from_millis(100)).is_ok());
            if up {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "nginx did not listen within 10 s: {}",
                std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills nginx at once (SIGKILL): its connections are cut, new ones refused.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Fails, showing the whole log, unless nginx's error log contains `text`.
    fn assert_logged(&self, text: &str) {
        let log = self.error_log();
        assert!(log.contains(text), "{log}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The generated configuration: one process (so killing the child kills nginx), temp paths in
/// the run's directory, short proxy timeouts (1 s to read under [`SLOW`]), the client's `Host`
/// passed on to the backend.
fn config(dir: &Path, servers: &[(SocketAddr, SocketAddr)]) -> String {
    let d = dir.display();
    let mut conf = format!(
        "worker_processes 1;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_http_version 1.1;
    proxy_set_header Host $http_host;
    proxy_set_header Connection \"\";
    proxy_connect_timeout 1s;
    proxy_send_timeout 5s;
    proxy_read_timeout 10s;
    proxy_next_upstream off;
"
    );
    for (listen, backend) in servers {
        conf.push_str(&format!(
            "    server {{
        listen {listen};
        location / {{ proxy_pass http://{backend}; }}
        location {SLOW} {{ proxy_pass http://{backend}; proxy_read_timeout 1s; }}
    }}
"
        ));
    }
    conf.push_str("}\n");
    conf
}

/// Backends, nginx in front of them, and the names resolving to nginx.
struct Setup {
    pair: Pair,
    /// One nginx with both server blocks, or one per side (`nginx[0]` fronts the primary).
    nginx: Vec<Nginx>,
    handle: FailoverHandle,
    events: tokio::sync::broadcast::Receiver<SwitchEvent>,
    service: Through,
}

async fn setup(one_nginx_per_side: bool) -> Setup {
    let pair = Pair::start().await;
    let backends = [pair.primary.addr, pair.alternate.addr];
    let nginx = if one_nginx_per_side {
        vec![Nginx::start(&backends[..1]), Nginx::start(&backends[1..])]
    } else {
        vec![Nginx::start(&backends)]
    };
    let fronts: Vec<SocketAddr> = nginx.iter().flat_map(|n| n.fronts.clone()).collect();
    // The client reaches the names through nginx, never the backends directly.
    pair.resolver.map(PRIMARY_HOST, fronts[0]);
    pair.resolver.map(ALTERNATE_HOST, fronts[1]);
    let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
    let handle = layer.handle();
    let events = handle.events();
    let service = pair.through(layer);
    Setup {
        pair,
        nginx,
        handle,
        events,
        service,
    }
}

fn post(key: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = request(Method::POST, "/api/data/v9.2/tasks");
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    request
}

fn get() -> Request<Full<Bytes>> {
    request(Method::GET, "/api/data/v9.2/WhoAmI")
}

/// The cause of the next `SwitchRequired`.
fn next_cause(events: &mut tokio::sync::broadcast::Receiver<SwitchEvent>) -> SwitchCause {
    loop {
        match events.try_recv().expect("a switch event") {
            SwitchEvent::SwitchRequired { cause, .. } => return cause,
            SwitchEvent::Switched { .. } => continue,
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[tokio::test]
async fn nginx_is_installed() {
    // Its own test, so a machine without nginx says so plainly, once.
    let binary = nginx_binary();
    let output = Command::new(&binary).arg("-v").output().unwrap();
    let version = String::from_utf8_lossy(&output.stderr);
    assert!(version.contains("nginx"), "{}: {version}", binary.display());
    eprintln!("using {} ({})", binary.display(), version.trim());
}

/// A dead primary backend: nginx answers 502. A GET and a keyed POST switch and are re-sent on
/// the alternate nginx, with the alternate's `Host`; a POST without a key is not re-sent and is
/// reported "possibly applied" (a 502 does not prove the backend never saw it).
#[tokio::test]
async fn a_dead_primary_backend_gives_502_and_fails_over_through_nginx() {
    within(20, async {
        let mut s = setup(false).await;
        // Through nginx to the primary backend, Host passed on.
        let body = send_ok(&s.service, get()).await;
        assert!(body.contains(PRIMARY_HOST), "{body}");
        assert_eq!(s.pair.primary.seen()[0].host.as_deref(), Some(PRIMARY_HOST));

        s.pair.primary.kill().await;

        // A read: 502 from nginx, switch, re-sent on the alternate nginx.
        let body = send_ok(&s.service, get()).await;
        assert!(body.contains(ALTERNATE_HOST), "{body}");
        assert_eq!(s.handle.active(), Side::Alternate);
        let status_502 = StatusCode::BAD_GATEWAY;
        assert_eq!(
            next_cause(&mut s.events),
            SwitchCause::EndpointDown(DownKind::Unavailable { status: status_502 })
        );
        let last = s.pair.alternate.seen().pop().unwrap();
        assert_eq!(
            last.host.as_deref(),
            Some(ALTERNATE_HOST),
            "Host rewritten for the alternate"
        );

        // A keyed write, starting on the primary again: re-sent, applied once on the alternate.
        assert_eq!(s.handle.fail_back(), Side::Primary);
        let before = s.pair.alternate.count();
        let body = send_ok(&s.service, post(Some("order-1"))).await;
        assert!(body.contains(ALTERNATE_HOST), "{body}");
        assert_eq!(s.pair.alternate.count(), before + 1);
        assert_eq!(
            s.pair.alternate.seen().pop().unwrap().idempotency_key.as_deref(),
            Some("order-1")
        );

        // A write without a key: not re-sent, typed error, possibly applied.
        assert_eq!(s.handle.fail_back(), Side::Primary);
        let before = s.pair.alternate.count();
        let error = match send(&s.service, post(None)).await {
            Ok(response) => panic!("a POST without key was answered {}", response.status()),
            Err(error) => error,
        };
        assert_eq!(
            error.kind(),
            &FailoverErrorKind::Unavailable { status: status_502 }
        );
        assert!(error.possibly_applied(), "{error}");
        assert_eq!(error.not_resent_because(), Some(NotResent::NotIdempotent));
        assert_eq!(s.pair.alternate.count(), before, "not sent to the alternate");
        assert_eq!(s.handle.active(), Side::Alternate, "but later calls go there");
        s.nginx[0].assert_logged("connect() failed");
    })
    .await
}

/// The primary backend is killed while it holds a request (it has read and recorded it): nginx
/// answers 502 ("upstream prematurely closed"). The write was in fact received, and the client
/// says so: possibly applied, not re-sent. A read cut off the same way is re-sent.
#[tokio::test]
async fn a_backend_killed_mid_request_gives_502_and_only_reads_are_resent() {
    within(20, async {
        let s = setup(false).await;
        s.pair.primary.set(Behavior::Delay(Duration::from_secs(30)));

        let write = tokio::spawn({
            let service = s.service.clone();
            async move { send(&service, post(None)).await }
        });
        let read = tokio::spawn({
            let service = s.service.clone();
            async move { send(&service, get()).await }
        });
        wait_until(5, "the primary backend holds both requests", || {
            s.pair.primary.count() == 2
        })
        .await;
        s.pair.primary.kill().await;

        let error = match write.await.unwrap() {
            Ok(response) => panic!("the write was answered {}", response.status()),
            Err(error) => error,
        };
        assert_eq!(
            error.kind(),
            &FailoverErrorKind::Unavailable {
                status: StatusCode::BAD_GATEWAY
            }
        );
        assert!(error.possibly_applied(), "the backend had it: {error}");
        assert_eq!(error.not_resent_because(), Some(NotResent::NotIdempotent));

        let response = read
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("the read failed: {e}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert!(text(response).await.contains(ALTERNATE_HOST));
        let on_alternate: Vec<_> = s.pair.alternate.seen().into_iter().map(|r| r.method).collect();
        assert_eq!(on_alternate, vec![Method::GET], "only the read was re-sent");
        s.nginx[0].assert_logged("upstream prematurely closed");
    })
    .await
}

/// A primary backend too slow for nginx's `proxy_read_timeout`: nginx answers 504, the read
/// switches and is re-sent.
#[tokio::test]
async fn a_hung_primary_backend_gives_504_and_a_read_fails_over() {
    within(20, async {
        let mut s = setup(false).await;
        s.pair.primary.set(Behavior::Delay(Duration::from_secs(10)));
        let started = Instant::now();
        let body = send_ok(&s.service, request(Method::GET, &format!("{SLOW}WhoAmI"))).await;
        assert!(body.contains(ALTERNATE_HOST), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            next_cause(&mut s.events),
            SwitchCause::EndpointDown(DownKind::Unavailable {
                status: StatusCode::GATEWAY_TIMEOUT
            })
        );
        s.nginx[0].assert_logged("timed out");
    })
    .await
}

/// nginx itself dies with requests in flight: the client's connections are cut. The read is
/// re-sent on the alternate; the write without key is not, and is possibly applied (the primary
/// backend did receive it). Afterwards the primary's name refuses connections: a write that
/// never left the client is re-sent whatever its method.
#[tokio::test]
async fn nginx_dying_mid_request_resets_and_fails_over() {
    within(20, async {
        // One nginx per side, so the primary's can die alone.
        let mut s = setup(true).await;
        s.pair.primary.set(Behavior::Delay(Duration::from_secs(30)));
        let write = tokio::spawn({
            let service = s.service.clone();
            async move { send(&service, post(None)).await }
        });
        let read = tokio::spawn({
            let service = s.service.clone();
            async move { send(&service, get()).await }
        });
        wait_until(5, "the primary backend holds both requests", || {
            s.pair.primary.count() == 2
        })
        .await;
        s.nginx[0].kill();

        let error = match write.await.unwrap() {
            Ok(response) => panic!("the write was answered {}", response.status()),
            Err(error) => error,
        };
        assert_eq!(error.kind(), &FailoverErrorKind::ConnectionLost, "{error}");
        assert!(error.possibly_applied(), "{error}");
        let response = read
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("the read failed: {e}"));
        assert!(text(response).await.contains(ALTERNATE_HOST));
        assert_eq!(
            next_cause(&mut s.events),
            SwitchCause::EndpointDown(DownKind::ConnectionLost)
        );

        // Back to the primary's name, now refusing connections: a POST without key is re-sent.
        assert_eq!(s.handle.fail_back(), Side::Primary);
        let before = s.pair.alternate.count();
        let body = send_ok(&s.service, post(None)).await;
        assert!(body.contains(ALTERNATE_HOST), "{body}");
        assert_eq!(s.pair.alternate.count(), before + 1);
    })
    .await
}
