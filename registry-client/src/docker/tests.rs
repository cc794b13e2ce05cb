use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use block_types::catalog::{DockerRegistry, MemoryLimit, SwapLimit};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use super::*;
use base64::engine::general_purpose::STANDARD;

const CANARY: &str = "canary-pw-5e1d";
const DIGEST: &str = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

fn container() -> DockerContainer {
    DockerContainer::new("discdiver/prefect:zoom")
}

fn config(c: &DockerContainer) -> RunConfig {
    c.run_config().unwrap()
}

fn error(c: &DockerContainer) -> DockerError {
    c.run_config().unwrap_err()
}

fn body(c: &DockerContainer) -> Value {
    config(c).create_body()
}

fn registry(password: &str) -> DockerRegistry {
    DockerRegistry {
        username: "discdiver".to_owned(),
        password: password.into(),
        registry_url: "index.docker.io".to_owned(),
        reauth: true,
    }
}

/// The value following `flag` in the run args, for every occurrence.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].clone())
        .collect()
}

#[test]
fn env_keeps_values_with_equals_and_leaves_out_nulls() {
    let mut c = container();
    c.env.insert("A".into(), Some("1".into()));
    c.env
        .insert("URL".into(), Some("postgres://h/db?x=y".into()));
    c.env.insert("EMPTY".into(), Some(String::new()));
    c.env.insert("UNSET".into(), None);
    let run = config(&c);
    assert_eq!(
        run.create_body()["Env"],
        json!(["A=1", "EMPTY=", "URL=postgres://h/db?x=y"])
    );
    let args = run.docker_run_args();
    assert_eq!(flag_values(&args, "--env"), ["A", "EMPTY", "URL"]);
    assert!(!args.iter().any(|a| a.contains("UNSET")));
    assert_eq!(
        exposed(&run.docker_run_env().unwrap()),
        exposed_pairs(&[("A", "1"), ("EMPTY", ""), ("URL", "postgres://h/db?x=y")])
    );
    assert_eq!(
        run.docker_run_env_file().unwrap().expose_secret(),
        "A=1\nEMPTY=\nURL=postgres://h/db?x=y\n"
    );
}

fn exposed(env: &[(String, SecretString)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(key, value)| (key.clone(), value.expose_secret().to_owned()))
        .collect()
}

fn exposed_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

#[test]
fn env_values_stay_off_the_command_line_and_out_of_debug() {
    let mut c = container();
    c.name = Some("zoom".into());
    c.env.insert("PREFECT_API_KEY".into(), Some(CANARY.into()));
    c.env
        .insert("DB_URL".into(), Some(format!("postgres://u:{CANARY}@h/db")));
    c.labels.insert("team".into(), "data".into());
    let run = config(&c);

    // The values reach the container: in the API body, and for the CLI through the
    // `docker` process's environment.
    assert_eq!(
        run.create_body()["Env"],
        json!([
            format!("DB_URL=postgres://u:{CANARY}@h/db"),
            format!("PREFECT_API_KEY={CANARY}")
        ])
    );
    assert_eq!(
        run.create.body_json()["Env"][1],
        format!("PREFECT_API_KEY={CANARY}")
    );
    assert_eq!(
        exposed(&run.docker_run_env().unwrap()),
        exposed_pairs(&[
            ("DB_URL", &format!("postgres://u:{CANARY}@h/db")),
            ("PREFECT_API_KEY", CANARY)
        ])
    );

    // But only the names are in the arguments and in Debug.
    let args = run.docker_run_args();
    assert_eq!(flag_values(&args, "--env"), ["DB_URL", "PREFECT_API_KEY"]);
    assert_eq!(flag_values(&args, "--label"), ["team=data"]);
    let env = &run.create.body.env;
    for text in [
        args.join(" "),
        format!("{run:?}"),
        format!("{run:#?}"),
        format!("{:?}", run.create),
        format!("{:#?}", run.create),
        format!("{:?}", run.create.body),
        format!("{:#?}", run.create.body),
        format!("{env:?}"),
        format!("{:?}", run.docker_run_env()),
        format!("{:?}", run.docker_run_env_file()),
        run.docker_run_args_with_env_file(Path::new("/run/zoom.env"))
            .join(" "),
    ] {
        assert!(!text.contains(CANARY), "{text}");
    }
    assert_eq!(
        format!("{env:?}"),
        r#"["DB_URL=********", "PREFECT_API_KEY=********"]"#
    );
    assert!(format!("{run:?}").contains("PREFECT_API_KEY=********"));
    assert_eq!(
        env.keys().collect::<Vec<_>>(),
        ["DB_URL", "PREFECT_API_KEY"]
    );
    assert_eq!(env.len(), 2);
    assert!(!env.is_empty());
}

#[test]
fn env_file_carries_the_values_off_the_command_line() {
    let mut c = container();
    c.name = Some("zoom".into());
    c.env.insert("PREFECT_API_KEY".into(), Some(CANARY.into()));
    c.env
        .insert("PATH".into(), Some(format!("/opt/{CANARY}/bin")));
    c.env
        .insert("SPACED".into(), Some(format!("  {CANARY} = x # y ")));
    let run = config(&c);

    let text = run.docker_run_env_file().unwrap();
    assert_eq!(
        text.expose_secret(),
        format!("PATH=/opt/{CANARY}/bin\nPREFECT_API_KEY={CANARY}\nSPACED=  {CANARY} = x # y \n")
    );

    let path = Path::new("/run/user/1000/zoom env.env");
    let args = run.docker_run_args_with_env_file(path);
    assert_eq!(
        flag_values(&args, "--env-file"),
        ["/run/user/1000/zoom env.env"]
    );
    assert!(flag_values(&args, "--env").is_empty());
    assert_eq!(flag_values(&args, "--name"), ["zoom"]);
    for text in [
        args.join(" "),
        run.docker_run_args().join(" "),
        format!("{text:?}"),
        format!("{:?}", run.docker_run_env_file()),
        format!("{run:?}"),
        format!("{run:#?}"),
    ] {
        assert!(!text.contains(CANARY), "{text}");
    }
}

#[test]
fn env_file_refuses_what_it_cannot_carry() {
    for value in [
        format!("{CANARY}\nINJECTED=1"),
        format!("{CANARY}\r"),
        format!("a\r\n{CANARY}"),
    ] {
        let mut c = container();
        c.env.insert("OK".into(), Some("fine".into()));
        c.env.insert("MULTI".into(), Some(value.clone()));
        let run = config(&c);
        // The Engine API carries it.
        assert_eq!(run.create_body()["Env"][0], format!("MULTI={value}"));
        let err = run.docker_run_env_file().unwrap_err();
        assert_eq!(err.field, "env.MULTI");
        assert!(err.message.contains("line break"), "{err}");
        assert!(err.message.contains("create_body"), "{err}");
        assert!(!err.to_string().contains(CANARY), "{err}");
        assert!(!format!("{err:?}").contains(CANARY), "{err:?}");
    }

    for key in [
        "#COMMENT",
        "A B",
        "TAB\tKEY",
        " LEAD",
        "A\nB",
        "\u{feff}BOM",
    ] {
        let mut c = container();
        c.env.insert(key.into(), Some(CANARY.into()));
        let run = config(&c);
        let err = run.docker_run_env_file().unwrap_err();
        assert_eq!(err.field, format!("env.{key}"), "{key:?}");
        assert!(!err.to_string().contains(CANARY), "{err}");
    }
}

#[test]
fn process_env_refuses_names_the_docker_cli_reads() {
    for key in [
        "PATH",
        "Path",
        "HOME",
        "DOCKER_HOST",
        "DOCKER_CONTEXT",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
        "DOCKER_CONFIG",
        "docker_host",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
        "TMPDIR",
        "XDG_CONFIG_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "GODEBUG",
    ] {
        assert!(is_read_by_docker_cli(key), "{key}");
        let mut c = container();
        c.env.insert("APP_SETTING".into(), Some("1".into()));
        c.env.insert(key.into(), Some(CANARY.into()));
        let run = config(&c);
        let err = run.docker_run_env().unwrap_err();
        assert_eq!(err.field, format!("env.{key}"));
        assert!(err.message.contains(key), "{err}");
        assert!(err.message.contains("env-file"), "{err}");
        assert!(err.message.contains("Engine API"), "{err}");
        assert!(!err.to_string().contains(CANARY), "{err}");
        // The other routes carry it.
        assert!(
            run.docker_run_env_file()
                .unwrap()
                .expose_secret()
                .contains(CANARY)
        );
        assert!(run.create_body()["Env"].to_string().contains(CANARY));
    }

    for key in [
        "PREFECT_API_KEY",
        "PREFECT_API_URL",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "EXTRA_PIP_PACKAGES",
        "DB_PASSWORD",
        "PYTHONPATH",
        "MY_DOCKER",
        "PROXY",
        "HOMEPAGE",
        "LD",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(!is_read_by_docker_cli(key), "{key}");
        let mut c = container();
        c.env.insert(key.into(), Some(CANARY.into()));
        assert_eq!(
            exposed(&config(&c).docker_run_env().unwrap()),
            exposed_pairs(&[(key, CANARY)])
        );
    }
}

#[test]
fn environments_compare_by_keys_and_values() {
    let env = |pairs: &[(&str, &str)]| -> Environment {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), SecretString::from(*value)))
            .collect()
    };
    assert_eq!(env(&[("A", "1")]), env(&[("A", "1")]));
    assert_ne!(env(&[("A", "1")]), env(&[("A", "2")]));
    assert_ne!(env(&[("A", "1")]), env(&[("B", "1")]));
    assert_ne!(env(&[("A", "1")]), env(&[("A", "1"), ("B", "2")]));
    assert!(Environment::default().is_empty());
    assert_eq!(
        serde_json::to_value(env(&[("A", "x=y"), ("B", "")])).unwrap(),
        json!(["A=x=y", "B="])
    );

    let mut c = container();
    c.env.insert("K".into(), Some("1".into()));
    let run = config(&c);
    assert_eq!(run.clone(), run);
    c.env.insert("K".into(), Some("2".into()));
    assert_ne!(config(&c), run);
}

#[test]
fn env_values_with_nul_are_refused_without_the_value() {
    let mut c = container();
    c.env
        .insert("SECRET".into(), Some(format!("{CANARY}\0tail")));
    let err = error(&c);
    assert_eq!(err.field, "env");
    assert!(err.message.contains("SECRET"), "{err}");
    assert!(!err.to_string().contains(CANARY), "{err}");
    assert!(!format!("{err:?}").contains(CANARY), "{err:?}");
}

#[test]
fn env_names_must_be_non_empty_without_equals() {
    let mut c = container();
    c.env.insert("A=B".into(), Some(CANARY.into()));
    let err = error(&c);
    assert_eq!(err.field, "env");
    assert!(err.message.contains("A=B"), "{err}");
    assert!(!err.to_string().contains(CANARY));

    let mut c = container();
    c.env.insert(String::new(), Some("x".into()));
    assert_eq!(error(&c).field, "env");
}

#[test]
fn labels_go_to_body_and_args() {
    let mut c = container();
    c.labels.insert("io.prefect.flow".into(), "etl".into());
    c.labels.insert("team".into(), "data=eng".into());
    let run = config(&c);
    assert_eq!(
        run.create_body()["Labels"],
        json!({"io.prefect.flow": "etl", "team": "data=eng"})
    );
    assert_eq!(
        flag_values(&run.docker_run_args(), "--label"),
        ["io.prefect.flow=etl", "team=data=eng"]
    );

    let mut c = container();
    c.labels.insert("a=b".into(), "c".into());
    assert_eq!(error(&c).field, "labels");
}

#[test]
fn name_goes_to_the_query_and_args() {
    let mut c = container();
    c.name = Some("zoom-flow_1.a".into());
    let run = config(&c);
    assert_eq!(run.create_path(), "/containers/create?name=zoom-flow_1.a");
    assert_eq!(run.create.name.as_deref(), Some("zoom-flow_1.a"));
    assert_eq!(
        flag_values(&run.docker_run_args(), "--name"),
        ["zoom-flow_1.a"]
    );
    assert!(run.create_body().get("Name").is_none());

    c.name = Some("/zoom".into());
    assert_eq!(config(&c).create_path(), "/containers/create?name=%2Fzoom");

    c.name = None;
    let run = config(&c);
    assert_eq!(run.create_path(), "/containers/create");
    assert!(!run.docker_run_args().contains(&"--name".to_owned()));
}

#[test]
fn invalid_names_are_refused() {
    for bad in [
        "",
        "a",
        "_zoom",
        "-zoom",
        "zoom flow",
        "zoom/flow",
        "zöom",
        "a&b=c",
    ] {
        let mut c = container();
        c.name = Some(bad.into());
        let err = error(&c);
        assert_eq!(err.field, "name", "{bad:?}");
        assert!(err.to_string().contains("name"), "{err}");
    }
}

#[test]
fn command_only_when_set() {
    let c = container();
    let run = config(&c);
    assert!(run.create_body().get("Cmd").is_none());
    assert_eq!(
        run.docker_run_args().last().unwrap(),
        "discdiver/prefect:zoom"
    );

    let mut c = container();
    c.command = Some(vec!["python".into(), "-m".into(), "flows.etl".into()]);
    let run = config(&c);
    assert_eq!(
        run.create_body()["Cmd"],
        json!(["python", "-m", "flows.etl"])
    );
    let args = run.docker_run_args();
    assert_eq!(
        args[args.len() - 4..],
        ["discdiver/prefect:zoom", "python", "-m", "flows.etl"]
    );
}

#[test]
fn volumes_become_binds() {
    let mut c = container();
    c.volumes = vec![
        "/data:/opt/data".into(),
        "cache:/root/.cache:ro".into(),
        "C:\\data:/data:rw,z".into(),
    ];
    let run = config(&c);
    assert_eq!(
        run.create_body()["HostConfig"]["Binds"],
        json!([
            "/data:/opt/data",
            "cache:/root/.cache:ro",
            "C:\\data:/data:rw,z"
        ])
    );
    assert_eq!(flag_values(&run.docker_run_args(), "--volume"), c.volumes);
}

#[test]
fn bad_volumes_name_their_index() {
    for bad in ["/data", ":/data", "/data:", "/a:/b:", "/a:/b:ro:x", ""] {
        let mut c = container();
        c.volumes = vec!["/ok:/ok".into(), bad.into()];
        let err = error(&c);
        assert_eq!(err.field, "volumes[1]", "{bad:?}");
        assert!(err.to_string().contains("volumes[1]"));
    }
}

#[test]
fn one_network_is_mode_and_endpoint() {
    let mut c = container();
    c.networks = vec!["prefect".into()];
    let run = config(&c);
    let body = run.create_body();
    assert_eq!(body["HostConfig"]["NetworkMode"], "prefect");
    assert_eq!(
        body["NetworkingConfig"],
        json!({"EndpointsConfig": {"prefect": {}}})
    );
    assert!(run.connect_networks.is_empty());
    assert_eq!(
        flag_values(&run.docker_run_args(), "--network"),
        ["prefect"]
    );
}

#[test]
fn further_networks_are_connected_after_create() {
    let mut c = container();
    c.networks = vec!["front".into(), "back".into(), "db net".into()];
    let run = config(&c);
    let body = run.create_body();
    assert_eq!(body["HostConfig"]["NetworkMode"], "front");
    assert_eq!(
        body["NetworkingConfig"]["EndpointsConfig"],
        json!({"front": {}})
    );
    assert_eq!(run.connect_networks, ["back", "db net"]);
    assert_eq!(network_connect_path("db net"), "/networks/db%20net/connect");
    assert_eq!(
        network_connect_body("abc123"),
        json!({"Container": "abc123"})
    );
    assert_eq!(
        flag_values(&run.docker_run_args(), "--network"),
        ["front", "back", "db net"]
    );

    c.networks = vec!["front".into(), "front".into()];
    assert_eq!(error(&c).field, "networks[1]");
    c.networks = vec![String::new()];
    assert_eq!(error(&c).field, "networks[0]");
}

#[test]
fn network_mode_wins() {
    let mut c = container();
    c.network_mode = Some("bridge".into());
    c.networks = vec!["prefect".into()];
    let run = config(&c);
    let body = run.create_body();
    assert_eq!(body["HostConfig"]["NetworkMode"], "bridge");
    assert!(body.get("NetworkingConfig").is_none());
    assert_eq!(run.connect_networks, ["prefect"]);
    assert_eq!(
        flag_values(&run.docker_run_args(), "--network"),
        ["bridge", "prefect"]
    );

    c.network_mode = Some("host".into());
    c.networks = vec![];
    let run = config(&c);
    assert_eq!(run.create_body()["HostConfig"]["NetworkMode"], "host");
    assert_eq!(flag_values(&run.docker_run_args(), "--network"), ["host"]);

    c.networks = vec!["prefect".into()];
    assert_eq!(error(&c).field, "networks");
}

#[test]
fn no_network_settings_without_networks() {
    let run = config(&container());
    let body = run.create_body();
    assert!(body["HostConfig"].get("NetworkMode").is_none());
    assert!(body.get("NetworkingConfig").is_none());
    assert!(!run.docker_run_args().contains(&"--network".to_owned()));
}

#[test]
fn auto_remove() {
    let mut c = container();
    let run = config(&c);
    assert_eq!(run.create_body()["HostConfig"]["AutoRemove"], false);
    assert!(!run.docker_run_args().contains(&"--rm".to_owned()));
    c.auto_remove = true;
    let run = config(&c);
    assert_eq!(run.create_body()["HostConfig"]["AutoRemove"], true);
    assert!(run.docker_run_args().contains(&"--rm".to_owned()));
}

fn memory_of(limit: MemoryLimit) -> Result<Option<i64>, DockerError> {
    let mut c = container();
    c.mem_limit = Some(limit);
    c.run_config().map(|r| r.create.body.host_config.memory)
}

#[test]
fn mem_limit_units() {
    const MIB: i64 = 1024 * 1024;
    let text = |s: &str| memory_of(MemoryLimit::Text(s.into())).unwrap();
    assert_eq!(
        memory_of(MemoryLimit::Bytes(536_870_912.0)).unwrap(),
        Some(512 * MIB)
    );
    assert_eq!(
        memory_of(MemoryLimit::Bytes(10_485_760.9)).unwrap(),
        Some(10 * MIB)
    );
    assert_eq!(text("536870912"), Some(512 * MIB));
    assert_eq!(text("512m"), Some(512 * MIB));
    assert_eq!(text("512M"), Some(512 * MIB));
    assert_eq!(text("512mb"), Some(512 * MIB));
    assert_eq!(text("512MB"), Some(512 * MIB));
    assert_eq!(text("524288k"), Some(512 * MIB));
    assert_eq!(text("536870912b"), Some(512 * MIB));
    assert_eq!(text("1g"), Some(1024 * MIB));
    assert_eq!(text("1G"), Some(1024 * MIB));
    assert_eq!(text("1.5g"), Some(1536 * MIB));
    assert_eq!(text(" 2g "), Some(2048 * MIB));
    assert_eq!(text("0"), Some(0));

    let mut c = container();
    c.mem_limit = Some(MemoryLimit::Text("1g".into()));
    let run = config(&c);
    assert_eq!(
        run.create_body()["HostConfig"]["Memory"],
        json!(1_073_741_824_i64)
    );
    assert_eq!(
        flag_values(&run.docker_run_args(), "--memory"),
        ["1073741824"]
    );

    let run = config(&container());
    assert!(run.create_body()["HostConfig"].get("Memory").is_none());
    assert!(!run.docker_run_args().contains(&"--memory".to_owned()));
}

#[test]
fn bad_mem_limits_name_the_field() {
    let cases = [
        MemoryLimit::Text("512x".into()),
        MemoryLimit::Text("512t".into()),
        MemoryLimit::Text("512kib".into()),
        MemoryLimit::Text(String::new()),
        MemoryLimit::Text("m".into()),
        MemoryLimit::Text("-1g".into()),
        MemoryLimit::Text("1e9".into()),
        MemoryLimit::Text("inf".into()),
        MemoryLimit::Text("1.2.3m".into()),
        MemoryLimit::Bytes(-1.0),
        MemoryLimit::Bytes(f64::NAN),
        MemoryLimit::Bytes(1e300),
        MemoryLimit::Bytes(512.0), // below Docker's 6 MiB minimum
    ];
    for limit in cases {
        let err = memory_of(limit.clone()).unwrap_err();
        assert_eq!(err.field, "mem_limit", "{limit:?}");
        assert!(err.to_string().contains("mem_limit"));
    }
    let err = memory_of(MemoryLimit::Text("512x".into())).unwrap_err();
    assert!(err.message.contains("unknown unit 'x'"), "{err}");
}

#[test]
fn memswap_limit() {
    let with = |mem: Option<&str>, swap: SwapLimit| {
        let mut c = container();
        c.mem_limit = mem.map(|m| MemoryLimit::Text(m.into()));
        c.memswap_limit = Some(swap);
        c.run_config()
    };
    let gib = 1_073_741_824_i64;
    let run = with(Some("512m"), SwapLimit::Bytes(-1)).unwrap();
    assert_eq!(run.create_body()["HostConfig"]["MemorySwap"], json!(-1));
    assert_eq!(flag_values(&run.docker_run_args(), "--memory-swap"), ["-1"]);
    assert_eq!(
        with(None, SwapLimit::Text("-1".into()))
            .unwrap()
            .create
            .body
            .host_config
            .memory_swap,
        Some(-1)
    );
    let run = with(Some("512m"), SwapLimit::Text("1g".into())).unwrap();
    assert_eq!(run.create.body.host_config.memory_swap, Some(gib));
    assert_eq!(
        flag_values(&run.docker_run_args(), "--memory-swap"),
        ["1073741824"]
    );
    assert_eq!(
        with(Some("1g"), SwapLimit::Bytes(gib))
            .unwrap()
            .create
            .body
            .host_config
            .memory_swap,
        Some(gib)
    );

    let err = with(Some("1g"), SwapLimit::Text("512m".into())).unwrap_err();
    assert_eq!(err.field, "memswap_limit");
    assert!(err.message.contains("less than mem_limit"), "{err}");
    for bad in [
        with(None, SwapLimit::Text("1g".into())),
        with(Some("1g"), SwapLimit::Bytes(-2)),
        with(Some("1g"), SwapLimit::Text("-2g".into())),
        with(Some("1g"), SwapLimit::Text("2q".into())),
    ] {
        assert_eq!(bad.unwrap_err().field, "memswap_limit");
    }
}

#[test]
fn privileged() {
    let mut c = container();
    assert_eq!(body(&c)["HostConfig"]["Privileged"], false);
    assert!(
        !config(&c)
            .docker_run_args()
            .contains(&"--privileged".to_owned())
    );
    c.privileged = true;
    assert_eq!(body(&c)["HostConfig"]["Privileged"], true);
    assert!(
        config(&c)
            .docker_run_args()
            .contains(&"--privileged".to_owned())
    );
}

fn pull_of(image: &str, policy: Option<ImagePullPolicy>) -> RunConfig {
    let mut c = DockerContainer::new(image);
    c.image_pull_policy = policy;
    config(&c)
}

#[test]
fn explicit_pull_policies() {
    for (policy, flag, absent, present) in [
        (ImagePullPolicy::Always, "always", true, true),
        (ImagePullPolicy::IfNotPresent, "missing", true, false),
        (ImagePullPolicy::Never, "never", false, false),
    ] {
        for image in ["img", "img:latest", "img:1.0"] {
            let run = pull_of(image, Some(policy));
            assert_eq!(run.pull, policy);
            assert_eq!(flag_values(&run.docker_run_args(), "--pull"), [flag]);
            assert_eq!(run.should_pull(false), absent);
            assert_eq!(run.should_pull(true), present);
        }
    }
}

#[test]
fn implied_pull_policies() {
    use ImagePullPolicy::{Always, IfNotPresent};
    let digested = format!("flows@{DIGEST}");
    let tagged_digested = format!("flows:latest@{DIGEST}");
    let hosted_digested = format!("localhost:5000/flows@{DIGEST}");
    for (image, policy, repository, reference) in [
        ("prefecthq/prefect", Always, "prefecthq/prefect", "latest"),
        (
            "prefecthq/prefect:latest",
            Always,
            "prefecthq/prefect",
            "latest",
        ),
        (
            "discdiver/prefect:zoom",
            IfNotPresent,
            "discdiver/prefect",
            "zoom",
        ),
        (
            "localhost:5000/flows",
            Always,
            "localhost:5000/flows",
            "latest",
        ),
        (
            "localhost:5000/flows:latest",
            Always,
            "localhost:5000/flows",
            "latest",
        ),
        (
            "localhost:5000/team/flows:v2",
            IfNotPresent,
            "localhost:5000/team/flows",
            "v2",
        ),
        (digested.as_str(), IfNotPresent, "flows", DIGEST),
        (tagged_digested.as_str(), IfNotPresent, "flows", DIGEST),
        (
            hosted_digested.as_str(),
            IfNotPresent,
            "localhost:5000/flows",
            DIGEST,
        ),
    ] {
        let run = pull_of(image, None);
        assert_eq!(run.pull, policy, "{image}");
        assert_eq!(run.image.repository, repository, "{image}");
        assert_eq!(run.image.pull_reference(), reference, "{image}");
        assert_eq!(run.create_body()["Image"], image, "{image}");
    }
}

#[test]
fn pull_paths() {
    assert_eq!(
        pull_of("discdiver/prefect:zoom", None).pull_path(),
        "/images/create?fromImage=discdiver%2Fprefect&tag=zoom"
    );
    assert_eq!(
        pull_of("localhost:5000/flows", None).pull_path(),
        "/images/create?fromImage=localhost%3A5000%2Fflows&tag=latest"
    );
    assert_eq!(
        pull_of(&format!("flows:1.0@{DIGEST}"), None).pull_path(),
        format!(
            "/images/create?fromImage=flows&tag=sha256%3A{}",
            &DIGEST[7..]
        )
    );
    let image = ImageRef::parse("ghcr.io/org/img:2.1").unwrap();
    assert_eq!(
        image,
        ImageRef {
            repository: "ghcr.io/org/img".into(),
            tag: Some("2.1".into()),
            digest: None,
        }
    );
}

#[test]
fn bad_images_are_refused() {
    for bad in [
        "",
        "img:",
        "img@",
        "img@sha256",
        "img@:abc",
        "-img",
        "my img",
        "img:a/b:",
        "/img",
        "img/",
        ":tag",
        "img:.x",
    ] {
        let err = ImageRef::parse(bad).unwrap_err();
        assert_eq!(err.field, "image", "{bad:?}");
        assert_eq!(error(&DockerContainer::new(bad)).field, "image");
    }
}

#[test]
fn registry_auth_header_is_url_safe_base64_json() {
    // Five '?' (0x3F) and five '>' (0x3E) in a row give '/' and '+' in standard base64.
    let password = "a?????>>>>>b";
    let mut c = container();
    c.image_registry = Some(registry(password));
    let run = config(&c);
    let header = run.registry_auth().unwrap().expose_secret();
    assert!(!header.contains('+') && !header.contains('/'), "{header}");
    let plain = URL_SAFE.decode(header).unwrap();
    let standard = STANDARD.encode(&plain);
    assert!(
        standard.contains('+') && standard.contains('/'),
        "{standard}"
    );
    let decoded: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(
        decoded,
        json!({"username": "discdiver", "password": password, "serveraddress": "index.docker.io"})
    );
    assert_eq!(run.login_password().unwrap().expose_secret(), password);
    let login = run.registry().unwrap();
    assert_eq!(login.username, "discdiver");
    assert_eq!(login.server_address, "index.docker.io");
    assert!(login.reauth);

    let run = config(&container());
    assert!(run.registry_auth().is_none());
    assert!(run.login_password().is_none());
    assert!(run.registry().is_none());
}

#[test]
fn registry_fields_are_checked() {
    let mut c = container();
    let mut r = registry(CANARY);
    r.username = " ".into();
    c.image_registry = Some(r);
    assert_eq!(error(&c).field, "image_registry.username");

    let mut r = registry(CANARY);
    r.registry_url = String::new();
    c.image_registry = Some(r);
    assert_eq!(error(&c).field, "image_registry.registry_url");

    c.image_registry = Some(registry(""));
    assert_eq!(error(&c).field, "image_registry.password");
}

#[test]
fn login_args_keep_the_password_off_the_command_line() {
    let mut c = container();
    c.image_registry = Some(registry(CANARY));
    let run = config(&c);
    assert_eq!(
        run.docker_login_args().unwrap(),
        [
            "login",
            "--username",
            "discdiver",
            "--password-stdin",
            "index.docker.io"
        ]
    );
    assert!(config(&container()).docker_login_args().is_none());
}

#[test]
fn the_password_never_leaks() {
    let mut c = container();
    c.image_registry = Some(registry(CANARY));
    c.name = Some("zoom".into());
    c.env.insert("K".into(), Some("v".into()));
    let run = config(&c);
    let header = run.registry_auth().unwrap().expose_secret().to_owned();
    for text in [
        format!("{run:?}"),
        format!("{run:#?}"),
        format!("{:?}", run.registry()),
        format!("{:?}", run.registry_auth()),
        run.create_body().to_string(),
        run.create_path(),
        run.pull_path(),
        run.docker_run_args().join(" "),
        run.docker_login_args().unwrap().join(" "),
    ] {
        assert!(!text.contains(CANARY), "{text}");
        assert!(!text.contains(&header), "{text}");
    }

    // Errors raised while credentials are present never carry the password.
    let mut bad_user = c.clone();
    bad_user.image_registry = Some(DockerRegistry {
        username: String::new(),
        ..registry(CANARY)
    });
    let mut bad_url = c.clone();
    bad_url.image_registry = Some(DockerRegistry {
        registry_url: String::new(),
        ..registry(CANARY)
    });
    let mut bad_kind = c.clone();
    bad_kind.kind = "process".into();
    let mut bad_memory = c.clone();
    bad_memory.mem_limit = Some(MemoryLimit::Text("1x".into()));
    for bad in [bad_user, bad_url, bad_kind, bad_memory] {
        let err = error(&bad);
        assert!(!err.to_string().contains(CANARY), "{err}");
        assert!(!format!("{err:?}").contains(CANARY), "{err:?}");
    }
}

#[test]
fn kind_must_be_docker_container() {
    let mut c = container();
    c.kind = "process".into();
    let err = error(&c);
    assert_eq!(err.field, "type");
    assert!(err.message.contains("docker-container"));
}

#[test]
fn run_configs_compare_and_clone() {
    let mut c = container();
    c.image_registry = Some(registry(CANARY));
    let run = config(&c);
    assert_eq!(run.clone(), run);
    c.image_registry = Some(registry("other"));
    assert_ne!(config(&c), run);
}

#[test]
fn the_course_block() {
    // The zoomcamp's `zoom` block: DockerContainer(image="discdiver/prefect:zoom",
    // image_pull_policy="ALWAYS", auto_remove=True), as the server stores it.
    let block: DockerContainer = serde_json::from_value(json!({
        "type": "docker-container",
        "env": {},
        "labels": {},
        "name": null,
        "command": null,
        "image": "discdiver/prefect:zoom",
        "image_pull_policy": "ALWAYS",
        "image_registry": null,
        "networks": [],
        "network_mode": null,
        "auto_remove": true,
        "volumes": [],
        "stream_output": true,
        "memswap_limit": null,
        "mem_limit": null,
        "privileged": false
    }))
    .unwrap();
    let run = block.run_config().unwrap();
    assert_eq!(
        run.create_body(),
        json!({
            "Image": "discdiver/prefect:zoom",
            "Env": [],
            "Labels": {},
            "HostConfig": {"AutoRemove": true, "Binds": [], "Privileged": false}
        })
    );
    assert_eq!(run.create_path(), "/containers/create");
    assert_eq!(run.pull, ImagePullPolicy::Always);
    assert_eq!(
        run.pull_path(),
        "/images/create?fromImage=discdiver%2Fprefect&tag=zoom"
    );
    assert!(run.stream_output);
    assert!(run.connect_networks.is_empty());
    assert!(run.registry_auth().is_none());
    assert_eq!(
        run.docker_run_args(),
        ["run", "--pull", "always", "--rm", "discdiver/prefect:zoom"]
    );
    assert!(run.docker_run_env().unwrap().is_empty());
    assert_eq!(run.docker_run_env_file().unwrap().expose_secret(), "");
    assert_eq!(
        run.docker_run_args_with_env_file(Path::new("/tmp/zoom.env")),
        [
            "run",
            "--env-file",
            "/tmp/zoom.env",
            "--pull",
            "always",
            "--rm",
            "discdiver/prefect:zoom"
        ]
    );
}

#[test]
fn a_full_block() {
    let mut c = DockerContainer::new("discdiver/prefect:zoom");
    c.name = Some("etl-web-to-gcs".into());
    c.command = Some(vec!["python".into(), "-m".into(), "prefect.engine".into()]);
    c.env = BTreeMap::from([
        ("EXTRA_PIP_PACKAGES".into(), Some("pandas pyarrow".into())),
        ("PREFECT_LOGGING_LEVEL".into(), None),
    ]);
    c.labels = BTreeMap::from([("course".into(), "zoomcamp".into())]);
    c.volumes = vec!["/home/me/data:/opt/prefect/data:ro".into()];
    c.networks = vec!["prefect".into(), "db".into()];
    c.auto_remove = true;
    c.mem_limit = Some(MemoryLimit::Text("2g".into()));
    c.memswap_limit = Some(SwapLimit::Bytes(-1));
    c.image_registry = Some(registry(CANARY));
    let run = c.run_config().unwrap();
    assert_eq!(run, run_config(&c).unwrap());
    assert_eq!(
        run.create_body(),
        json!({
            "Image": "discdiver/prefect:zoom",
            "Cmd": ["python", "-m", "prefect.engine"],
            "Env": ["EXTRA_PIP_PACKAGES=pandas pyarrow"],
            "Labels": {"course": "zoomcamp"},
            "HostConfig": {
                "AutoRemove": true,
                "Binds": ["/home/me/data:/opt/prefect/data:ro"],
                "NetworkMode": "prefect",
                "Memory": 2_147_483_648_i64,
                "MemorySwap": -1,
                "Privileged": false
            },
            "NetworkingConfig": {"EndpointsConfig": {"prefect": {}}}
        })
    );
    assert_eq!(run.create_path(), "/containers/create?name=etl-web-to-gcs");
    assert_eq!(run.connect_networks, ["db"]);
    assert_eq!(run.pull, ImagePullPolicy::IfNotPresent);
    assert_eq!(
        run.docker_run_args(),
        [
            "run",
            "--name",
            "etl-web-to-gcs",
            "--env",
            "EXTRA_PIP_PACKAGES",
            "--label",
            "course=zoomcamp",
            "--volume",
            "/home/me/data:/opt/prefect/data:ro",
            "--network",
            "prefect",
            "--network",
            "db",
            "--memory",
            "2147483648",
            "--memory-swap",
            "-1",
            "--pull",
            "missing",
            "--rm",
            "discdiver/prefect:zoom",
            "python",
            "-m",
            "prefect.engine",
        ]
    );
    assert_eq!(
        exposed(&run.docker_run_env().unwrap()),
        exposed_pairs(&[("EXTRA_PIP_PACKAGES", "pandas pyarrow")])
    );
    assert_eq!(
        run.docker_run_env_file().unwrap().expose_secret(),
        "EXTRA_PIP_PACKAGES=pandas pyarrow\n"
    );
    let mut with_file = run.docker_run_args();
    with_file.splice(3..5, ["--env-file".to_owned(), "/tmp/etl.env".to_owned()]);
    assert_eq!(
        run.docker_run_args_with_env_file(Path::new("/tmp/etl.env")),
        with_file
    );
}
