//! Compose file loading against real YAML samples: every supported form, every warning, and
//! the wording of the errors (file, line, key and fix).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mayfly_engine::compose::{
    find_default_file, ComposeError, ComposePort, ComposeProject, ComposeService, ConfigFile,
    Dependency, DependencyCondition, Mount,
};
use mayfly_engine::definition::Protocol;
use mayfly_engine::health_check::{HealthCheck, HealthTest};

const FILE: &str = "/srv/shop/compose.yaml";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn parse_with(source: &str, pairs: &[(&str, &str)]) -> Result<ComposeProject, ComposeError> {
    ComposeProject::parse(source, Path::new(FILE), &env(pairs))
}

fn parse(source: &str) -> ComposeProject {
    parse_with(source, &[("HOME", "/home/ann")]).unwrap_or_else(|error| panic!("{error}"))
}

fn error(source: &str) -> String {
    match parse_with(source, &[("HOME", "/home/ann")]) {
        Ok(project) => panic!("expected an error, got {project:?}"),
        Err(error) => error.to_string(),
    }
}

fn warnings(project: &ComposeProject) -> Vec<String> {
    project.warnings.iter().map(ToString::to_string).collect()
}

/// Parses a file with one service and returns that service.
fn only_service(source: &str) -> ComposeService {
    let project = parse(source);
    assert_eq!(project.services.len(), 1);
    project.services.into_values().next().unwrap()
}

const SHOP: &str = r#"
version: "3.9"
name: shop

x-database-env: &database-env
  MARIADB_DATABASE: shop
  MARIADB_USER: shop

services:
  web:
    image: ghcr.io/example/shop:${TAG:-latest}
    command: ["gunicorn", "--bind", "0.0.0.0:8000", "shop.wsgi"]
    environment:
      <<: *database-env
      DATABASE_HOST: database
      DEBUG: "false"
    ports:
      - "8000:8000"
    depends_on:
      db:
        condition: service_healthy
    links:
      - db:database
    configs:
      - source: shop_settings
        target: /etc/shop/settings.ini
        mode: 0440
    restart: unless-stopped
    networks: [front]

  db:
    image: mariadb:11
    environment:
      <<: *database-env
      MARIADB_PASSWORD: ${DB_PASSWORD:?set DB_PASSWORD to the database password}
      MARIADB_RANDOM_ROOT_PASSWORD: "1"
    healthcheck:
      test: ["CMD", "healthcheck.sh", "--connect", "--innodb_initialized"]
      interval: 5s
      timeout: 3s
      retries: 10
      start_period: 1m
    volumes:
      - db-data:/var/lib/mysql
      - ./initdb:/docker-entrypoint-initdb.d:ro
    expose:
      - "3306"

configs:
  shop_settings:
    content: |
      [database]
      host = database
      name = shop

volumes:
  db-data:

networks:
  front:
"#;

#[test]
fn realistic_web_and_database() {
    let project = parse_with(SHOP, &[("DB_PASSWORD", "secret")]).unwrap();
    assert_eq!(project.name, "shop");
    assert_eq!(project.dir, PathBuf::from("/srv/shop"));
    assert_eq!(project.services.keys().collect::<Vec<_>>(), ["db", "web"]);

    let web = &project.services["web"];
    assert_eq!(web.image, "ghcr.io/example/shop:latest");
    assert_eq!(
        web.command.as_deref(),
        Some(&["gunicorn", "--bind", "0.0.0.0:8000", "shop.wsgi"].map(String::from)[..])
    );
    assert_eq!(
        web.environment,
        [
            ("MARIADB_DATABASE", "shop"),
            ("MARIADB_USER", "shop"),
            ("DATABASE_HOST", "database"),
            ("DEBUG", "false"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
    );
    assert_eq!(
        web.ports,
        [ComposePort {
            host_ip: None,
            published: Some(8000),
            target: 8000,
            protocol: Protocol::Tcp,
        }]
    );
    assert_eq!(
        web.depends_on,
        [Dependency {
            service: "db".to_owned(),
            condition: DependencyCondition::Healthy,
            required: true,
            restart: false,
        }]
    );
    assert_eq!(web.links, [("db".to_owned(), "database".to_owned())]);
    assert_eq!(
        web.files,
        [ConfigFile {
            target: "/etc/shop/settings.ini".to_owned(),
            content: "[database]\nhost = database\nname = shop\n".to_owned(),
            mode: 0o440,
        }]
    );
    assert_eq!(web.healthcheck, None);

    let db = &project.services["db"];
    assert_eq!(db.image, "mariadb:11");
    assert!(db
        .environment
        .contains(&("MARIADB_PASSWORD".to_owned(), "secret".to_owned())));
    assert_eq!(
        db.healthcheck,
        Some(HealthCheck {
            test: HealthTest::Exec(
                ["healthcheck.sh", "--connect", "--innodb_initialized"]
                    .map(String::from)
                    .to_vec()
            ),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            start_period: Duration::from_secs(60),
            start_interval: HealthCheck::new(HealthTest::None).start_interval,
            retries: 10,
        })
    );
    assert_eq!(
        db.mounts,
        [Mount::Bind {
            source: PathBuf::from("/srv/shop/initdb"),
            target: "/docker-entrypoint-initdb.d".to_owned(),
            read_only: true,
            create_host_path: true,
        }]
    );
    assert_eq!(db.expose, [(3306, Protocol::Tcp)]);

    assert_eq!(
        warnings(&project),
        [
            "volumes is ignored by mayfly",
            "networks is ignored by mayfly",
            "services.web.restart is ignored by mayfly",
            "services.web.networks is ignored by mayfly",
            "services.db.volumes[0] is ignored by mayfly: named and anonymous volumes are not \
             supported, so this data lasts only as long as the container; use a bind mount \
             (./dir:/path) to keep it",
        ]
    );
    assert_eq!(project.dependency_order(&["web"]).unwrap(), ["db", "web"]);
}

#[test]
fn realistic_file_needs_its_required_variable() {
    let message = parse_with(SHOP, &[]).unwrap_err().to_string();
    assert_eq!(
        message,
        "/srv/shop/compose.yaml:35: services.db.environment.MARIADB_PASSWORD: variable \
         DB_PASSWORD is required but not set: set DB_PASSWORD to the database password"
    );
}

#[test]
fn command_and_entrypoint_forms() {
    let service = only_service(
        r#"
services:
  app:
    image: alpine
    entrypoint: /bin/sh -c
    command: echo "hello world" 'two  spaces' $$HOME
"#,
    );
    assert_eq!(
        service.entrypoint,
        Some(vec!["/bin/sh".to_owned(), "-c".to_owned()])
    );
    assert_eq!(
        service.command,
        Some(
            ["echo", "hello world", "two  spaces", "$HOME"]
                .map(String::from)
                .to_vec()
        )
    );

    let cleared =
        only_service("services:\n  app:\n    image: alpine\n    command: ''\n    entrypoint: []\n");
    assert_eq!(cleared.command, Some(vec![]));
    assert_eq!(cleared.entrypoint, Some(vec![]));

    let kept = only_service("services:\n  app:\n    image: alpine\n    command: null\n");
    assert_eq!(kept.command, None);
    assert_eq!(kept.entrypoint, None);
}

#[test]
fn command_with_open_quote_is_rejected() {
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    command: echo \"oops\n"),
        "/srv/shop/compose.yaml:4: services.app.command: cannot split \"echo \\\"oops\" into \
         words; close its quotes or write it as a list"
    );
}

#[test]
fn environment_forms() {
    let source = r#"
services:
  listed:
    image: alpine
    environment:
      - PLAIN=value
      - EMPTY=
      - WITH_EQUALS=a=b
      - FROM_HOST
      - NOT_ON_HOST
      - PLAIN=overridden
  mapped:
    image: alpine
    environment:
      VERSION: 1.10
      ENABLED: true
      PORT: 8080
      FROM_HOST:
      NOT_ON_HOST:
      QUOTED: "$$literal"
"#;
    let project = parse_with(source, &[("FROM_HOST", "host value")]).unwrap();
    let pairs =
        |service: &str| -> Vec<(String, String)> { project.services[service].environment.clone() };
    let expected = |items: &[(&str, &str)]| -> Vec<(String, String)> {
        items
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    };

    assert_eq!(
        pairs("listed"),
        expected(&[
            ("PLAIN", "overridden"),
            ("EMPTY", ""),
            ("WITH_EQUALS", "a=b"),
            ("FROM_HOST", "host value"),
        ])
    );
    assert_eq!(
        pairs("mapped"),
        expected(&[
            ("VERSION", "1.10"),
            ("ENABLED", "true"),
            ("PORT", "8080"),
            ("FROM_HOST", "host value"),
            ("QUOTED", "$literal"),
        ])
    );
}

#[test]
fn environment_of_wrong_type_is_rejected() {
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    environment: FOO=bar\n"),
        "/srv/shop/compose.yaml:4: services.app.environment: expected a mapping or a list of \
         NAME=VALUE strings, found a scalar"
    );
}

#[test]
fn working_dir_user_and_platform() {
    let service = only_service(
        "services:\n  app:\n    image: alpine\n    working_dir: /work\n    user: 1000:1000\n    platform: linux/arm64\n",
    );
    assert_eq!(service.working_dir.as_deref(), Some("/work"));
    assert_eq!(service.user.as_deref(), Some("1000:1000"));
    assert_eq!(service.platform.as_deref(), Some("linux/arm64"));

    let numeric = only_service("services:\n  app:\n    image: alpine\n    user: 1000\n");
    assert_eq!(numeric.user.as_deref(), Some("1000"));
}

#[test]
fn expose_forms() {
    let service = only_service(
        "services:\n  dns:\n    image: coredns\n    expose: [\"8080\", 9090, \"53/udp\", \"7000-7002/tcp\"]\n",
    );
    assert_eq!(
        service.expose,
        [
            (8080, Protocol::Tcp),
            (9090, Protocol::Tcp),
            (53, Protocol::Udp),
            (7000, Protocol::Tcp),
            (7001, Protocol::Tcp),
            (7002, Protocol::Tcp),
        ]
    );
}

#[test]
fn ports_short_and_long_syntax() {
    let project = parse(
        r#"
services:
  web:
    image: nginx
    ports:
      - "8080:80"
      - "127.0.0.1:8443:443"
      - "9000"
      - 9001
      - "5353:53/udp"
      - target: 80
        published: "8081"
        host_ip: 127.0.0.1
        protocol: tcp
        mode: host
        name: web
      - target: 8125
        protocol: udp
"#,
    );
    let localhost = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let port = |host_ip, published, target, protocol| ComposePort {
        host_ip,
        published,
        target,
        protocol,
    };
    assert_eq!(
        project.services["web"].ports,
        [
            port(None, Some(8080), 80, Protocol::Tcp),
            port(localhost, Some(8443), 443, Protocol::Tcp),
            port(None, None, 9000, Protocol::Tcp),
            port(None, None, 9001, Protocol::Tcp),
            port(None, Some(5353), 53, Protocol::Udp),
            port(localhost, Some(8081), 80, Protocol::Tcp),
            port(None, None, 8125, Protocol::Udp),
        ]
    );
    assert_eq!(
        warnings(&project),
        [
            "services.web.ports[5].mode is ignored by mayfly",
            "services.web.ports[5].name is ignored by mayfly",
        ]
    );
}

#[test]
fn bad_ports_name_file_line_and_key() {
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    ports:\n      - \"80:http\"\n"),
        "/srv/shop/compose.yaml:5: services.web.ports[0]: invalid port \"80:http\": a port is a \
         number from 1 to 65535"
    );
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    ports:\n      - \"8000-8010:80\"\n"),
        "/srv/shop/compose.yaml:5: services.web.ports[0]: invalid port \"8000-8010:80\": the \
         host and container ranges differ in length; give ranges of equal length, because \
         mayfly does not pick a host port from a range"
    );
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    ports:\n      - published: 80\n"),
        "/srv/shop/compose.yaml:5: services.web.ports[0]: target is required; add it"
    );
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    ports:\n      - \"80/sctp\"\n"),
        "/srv/shop/compose.yaml:5: services.web.ports[0]: invalid port \"80/sctp\": the \
         protocol must be tcp or udp"
    );
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    ports: \"80:80\"\n"),
        "/srv/shop/compose.yaml:4: services.web.ports: expected a list, found a scalar"
    );
}

#[test]
fn healthcheck_forms() {
    let project = parse(
        r#"
services:
  exec:
    image: alpine
    healthcheck:
      test: ["CMD", "pg_isready", "-U", "postgres"]
  shell:
    image: alpine
    healthcheck:
      test: ["CMD-SHELL", "curl -f http://localhost || exit 1"]
      interval: 1m30s
      timeout: 500ms
      retries: "5"
      start_period: 1h
      start_interval: 2s
  string:
    image: alpine
    healthcheck:
      test: curl -f http://localhost
  none:
    image: alpine
    healthcheck:
      test: ["NONE"]
  disabled:
    image: alpine
    healthcheck:
      disable: true
  timings_only:
    image: alpine
    healthcheck:
      interval: 10s
  inherited:
    image: alpine
    healthcheck:
      test: []
      retries: 2
"#,
    );
    let check = |name: &str| project.services[name].healthcheck.clone();

    assert_eq!(
        check("exec"),
        Some(HealthCheck::new(HealthTest::Exec(
            ["pg_isready", "-U", "postgres"].map(String::from).to_vec()
        )))
    );
    assert_eq!(
        check("shell"),
        Some(HealthCheck {
            test: HealthTest::Shell("curl -f http://localhost || exit 1".to_owned()),
            interval: Duration::from_secs(90),
            timeout: Duration::from_millis(500),
            start_period: Duration::from_secs(3600),
            start_interval: Duration::from_secs(2),
            retries: 5,
        })
    );
    assert_eq!(
        check("string"),
        Some(HealthCheck::new(HealthTest::Shell(
            "curl -f http://localhost".to_owned()
        )))
    );
    assert_eq!(check("none"), Some(HealthCheck::new(HealthTest::None)));
    assert_eq!(check("disabled"), Some(HealthCheck::new(HealthTest::None)));
    assert_eq!(check("timings_only"), None);
    assert_eq!(check("inherited"), None);
    assert_eq!(
        warnings(&project),
        [
            "services.timings_only.healthcheck.interval is ignored by mayfly: the healthcheck \
             has no test, so the image's health check applies unchanged",
            "services.inherited.healthcheck.retries is ignored by mayfly: the healthcheck has \
             no test, so the image's health check applies unchanged",
        ]
    );
}

#[test]
fn bad_healthchecks_are_rejected() {
    assert_eq!(
        error("services:\n  db:\n    image: alpine\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 10\n"),
        "/srv/shop/compose.yaml:6: services.db.healthcheck.interval: invalid duration \"10\": a \
         unit is missing; write numbers with units (ns, us, ms, s, m, h), such as 500ms, 2s or \
         1m30s"
    );
    assert_eq!(
        error("services:\n  db:\n    image: alpine\n    healthcheck:\n      test: [\"RUN\", \"true\"]\n"),
        "/srv/shop/compose.yaml:5: services.db.healthcheck.test: unknown health check type \
         \"RUN\" in Test [\"RUN\", \"true\"]; use NONE, CMD or CMD-SHELL"
    );
    assert_eq!(
        error("services:\n  db:\n    image: alpine\n    healthcheck:\n      test: true\n      retries: -1\n"),
        "/srv/shop/compose.yaml:6: services.db.healthcheck.retries: invalid value \"-1\": \
         expected a non-negative integer"
    );
}

#[test]
fn depends_on_forms() {
    let project = parse(
        r#"
services:
  app:
    image: app
    depends_on:
      - cache
  worker:
    image: app
    depends_on:
      migrate:
        condition: service_completed_successfully
        restart: true
      cache:
        condition: service_started
        required: false
      app:
  migrate:
    image: app
  cache:
    image: redis
"#,
    );
    let dependency = |service: &str, condition, required, restart| Dependency {
        service: service.to_owned(),
        condition,
        required,
        restart,
    };
    assert_eq!(
        project.services["app"].depends_on,
        [dependency(
            "cache",
            DependencyCondition::Started,
            true,
            false
        )]
    );
    assert_eq!(
        project.services["worker"].depends_on,
        [
            dependency(
                "migrate",
                DependencyCondition::CompletedSuccessfully,
                true,
                true
            ),
            dependency("cache", DependencyCondition::Started, false, false),
            dependency("app", DependencyCondition::Started, true, false),
        ]
    );
    assert_eq!(
        project.dependency_order(&["worker"]).unwrap(),
        ["migrate", "cache", "app", "worker"]
    );
    assert_eq!(
        project.dependency_order(&[]).unwrap(),
        ["cache", "app", "migrate", "worker"]
    );
    assert_eq!(project.dependency_order(&["cache"]).unwrap(), ["cache"]);
}

#[test]
fn links_forms() {
    let service = parse(
        "services:\n  web:\n    image: nginx\n    links: [db, \"cache:redis\"]\n  db:\n    image: postgres\n  cache:\n    image: redis\n",
    )
    .services
    .remove("web")
    .unwrap();
    assert_eq!(
        service.links,
        [
            ("db".to_owned(), "db".to_owned()),
            ("cache".to_owned(), "redis".to_owned()),
        ]
    );
}

#[test]
fn unknown_services_in_references() {
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    depends_on: [dbb]\n  db:\n    image: postgres\n"),
        "/srv/shop/compose.yaml:4: services.web.depends_on[0]: service \"dbb\" is not defined in \
         this file (services: web, db); fix the name or add the service"
    );
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    depends_on:\n      cache:\n        condition: service_healthy\n"),
        "/srv/shop/compose.yaml:6: services.web.depends_on.cache: service \"cache\" is not \
         defined in this file (services: web); fix the name or add the service"
    );
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    links: [\"db:database\"]\n"),
        "/srv/shop/compose.yaml:4: services.web.links[0]: service \"db\" is not defined in this \
         file (services: web); fix the name or add the service"
    );
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    depends_on:\n      db:\n        condition: healthy\n  db:\n    image: postgres\n"),
        "/srv/shop/compose.yaml:6: services.web.depends_on.db.condition: invalid value \
         \"healthy\": expected service_started, service_healthy or \
         service_completed_successfully"
    );
}

#[test]
fn dependency_cycles_are_named() {
    assert_eq!(
        error(
            "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    links: [c]\n  c:\n    image: x\n    depends_on: [a]\n"
        ),
        "/srv/shop/compose.yaml: services depend on each other in a cycle: a -> b -> c -> a; \
         remove one of these depends_on or links entries"
    );
    assert_eq!(
        error("services:\n  a:\n    image: x\n    depends_on: [a]\n"),
        "/srv/shop/compose.yaml: services depend on each other in a cycle: a -> a; remove one \
         of these depends_on or links entries"
    );
}

#[test]
fn dependency_order_rejects_unknown_roots() {
    let project = parse("services:\n  web:\n    image: nginx\n");
    assert_eq!(
        project.dependency_order(&["db"]).unwrap_err().to_string(),
        "service \"db\" is not defined in /srv/shop/compose.yaml (services: web); pick one of \
         those"
    );
    assert!(project.service("web").is_ok());
    assert!(project.service("db").is_err());
}

#[test]
fn volume_forms() {
    let project = parse(
        r#"
services:
  app:
    image: alpine
    volumes:
      - ./src:/app/src
      - ../shared:/shared:ro
      - /var/run/app.sock:/run/app.sock:rw
      - ~/cache:/cache:ro,z
      - cache:/var/cache
      - /anonymous
      - type: bind
        source: ./conf
        target: /etc/app
        read_only: yes
        bind:
          create_host_path: false
          propagation: rprivate
      - type: tmpfs
        target: /scratch
        tmpfs:
          size: 64m
          mode: 1777
      - type: volume
        source: data
        target: /data
    tmpfs:
      - /run
      - /tmp:size=1m,mode=1777
"#,
    );
    let bind = |source: &str, target: &str, read_only, create_host_path| Mount::Bind {
        source: PathBuf::from(source),
        target: target.to_owned(),
        read_only,
        create_host_path,
    };
    let tmpfs = |target: &str, options: &[&str]| Mount::Tmpfs {
        target: target.to_owned(),
        options: options.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(
        project.services["app"].mounts,
        [
            bind("/srv/shop/src", "/app/src", false, true),
            bind("/srv/shared", "/shared", true, true),
            bind("/var/run/app.sock", "/run/app.sock", false, true),
            bind("/home/ann/cache", "/cache", true, true),
            bind("/srv/shop/conf", "/etc/app", true, false),
            tmpfs("/scratch", &["size=67108864", "mode=1777"]),
            tmpfs("/run", &[]),
            tmpfs("/tmp", &["size=1m", "mode=1777"]),
        ]
    );

    let volume_reason = "is ignored by mayfly: named and anonymous volumes are not supported, \
                         so this data lasts only as long as the container; use a bind mount \
                         (./dir:/path) to keep it";
    assert_eq!(
        warnings(&project),
        [
            "services.app.volumes[3] option z is ignored by mayfly".to_owned(),
            format!("services.app.volumes[4] {volume_reason}"),
            format!("services.app.volumes[5] {volume_reason}"),
            "services.app.volumes[6].bind.propagation is ignored by mayfly".to_owned(),
            format!("services.app.volumes[8] {volume_reason}"),
        ]
    );
}

#[test]
fn bad_volumes_are_rejected() {
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    volumes:\n      - ./data:data\n"),
        "/srv/shop/compose.yaml:5: services.app.volumes[0]: invalid value \"data\": expected an \
         absolute path in the container"
    );
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    volumes:\n      - ./data:/data:rx\n"),
        "/srv/shop/compose.yaml:5: services.app.volumes[0]: invalid value \"rx\": expected \
         mount options ro or rw, separated by commas"
    );
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    volumes:\n      - type: image\n        source: alpine\n        target: /img\n"),
        "/srv/shop/compose.yaml:5: services.app.volumes[0].type: the volume type image is not \
         supported by mayfly; use type bind or tmpfs"
    );
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    volumes:\n      - type: tmpfs\n        target: /t\n        read_only: maybe\n"),
        "/srv/shop/compose.yaml:7: services.app.volumes[0].read_only: invalid value \"maybe\": \
         expected true or false"
    );
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    volumes:\n      - type: bind\n        target: /data\n"),
        "/srv/shop/compose.yaml:5: services.app.volumes[0]: source is required; add it"
    );
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    volumes:\n      - type: tmpfs\n        target: /t\n        tmpfs:\n          size: lots\n"),
        "/srv/shop/compose.yaml:8: services.app.volumes[0].tmpfs.size: invalid value \"lots\": \
         expected a byte size such as 64m or 1048576"
    );
}

#[test]
fn config_forms() {
    let project = parse_with(
        r#"
services:
  app:
    image: alpine
    configs:
      - greeting
      - source: greeting
        target: relative.txt
      - source: from_env
        target: /etc/token
        mode: 0o600
        uid: "1000"
configs:
  greeting:
    content: "hello ${WHO}"
  from_env:
    environment: TOKEN
    name: ignored-name
"#,
        &[("WHO", "world"), ("TOKEN", "t0k3n")],
    )
    .unwrap();
    let file = |target: &str, content: &str, mode| ConfigFile {
        target: target.to_owned(),
        content: content.to_owned(),
        mode,
    };
    assert_eq!(
        project.services["app"].files,
        [
            file("/greeting", "hello world", 0o444),
            file("/relative.txt", "hello world", 0o444),
            file("/etc/token", "t0k3n", 0o600),
        ]
    );
    assert_eq!(
        warnings(&project),
        [
            "configs.from_env.name is ignored by mayfly",
            "services.app.configs[2].uid is ignored by mayfly",
        ]
    );
}

#[test]
fn bad_configs_are_rejected() {
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    configs: [missing]\n"),
        "/srv/shop/compose.yaml:4: services.app.configs[0]: config \"missing\" is not defined \
         under the top-level `configs:`; define it there with `content:`, `file:` or \
         `environment:`"
    );
    assert_eq!(
        error("services:\n  app:\n    image: alpine\nconfigs:\n  c:\n    external: true\n"),
        "/srv/shop/compose.yaml:6: configs.c.external: an external config is not supported by \
         mayfly; define the config in this file with content: or file:"
    );
    assert_eq!(
        error(
            "services:\n  app:\n    image: alpine\nconfigs:\n  c:\n    content: a\n    file: ./b\n"
        ),
        "/srv/shop/compose.yaml:7: configs.c.file: content and file cannot both be set; keep \
         one of them"
    );
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    configs: [c]\nconfigs:\n  c:\n    environment: NOT_SET\n"),
        "/srv/shop/compose.yaml:7: configs.c: variable NOT_SET is not set; export it before \
         running mayfly"
    );
}

#[test]
fn file_configs_resolve_next_to_the_compose_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nginx.conf"), "worker_processes 1;\n").unwrap();
    std::fs::write(dir.path().join("blob.bin"), [0xff, 0xfe, 0x00]).unwrap();
    let compose = dir.path().join("compose.yaml");
    std::fs::write(
        &compose,
        "services:\n  web:\n    image: nginx\n    configs:\n      - source: nginx\n        target: /etc/nginx/nginx.conf\nconfigs:\n  nginx:\n    file: ./nginx.conf\n",
    )
    .unwrap();

    let project = ComposeProject::load(&compose).unwrap();
    assert_eq!(project.dir, dir.path());
    assert_eq!(
        project.services["web"].files,
        [ConfigFile {
            target: "/etc/nginx/nginx.conf".to_owned(),
            content: "worker_processes 1;\n".to_owned(),
            mode: 0o444,
        }]
    );

    std::fs::write(
        &compose,
        "services:\n  web:\n    image: nginx\n    configs: [blob]\nconfigs:\n  blob:\n    file: blob.bin\n",
    )
    .unwrap();
    let message = ComposeProject::load(&compose).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "{}:7: configs.blob: config file {} is not UTF-8 text; mayfly only copies text \
             configs",
            compose.display(),
            dir.path().join("blob.bin").display()
        )
    );
}

#[test]
fn interpolation_forms() {
    let project = parse_with(
        r#"
services:
  app:
    image: "${REGISTRY:-docker.io}/library/${IMAGE}:${TAG-1}"
    working_dir: $WORKDIR
    user: ${NOBODY}
    command: ["echo", "$${NOT_INTERPOLATED}", "${EMPTY:-fallback}", "${EMPTY-kept}"]
"#,
        &[("IMAGE", "redis"), ("WORKDIR", "/data"), ("EMPTY", "")],
    )
    .unwrap();
    let app = &project.services["app"];
    assert_eq!(app.image, "docker.io/library/redis:1");
    assert_eq!(app.working_dir.as_deref(), Some("/data"));
    assert_eq!(app.user.as_deref(), Some(""));
    assert_eq!(
        app.command,
        Some(
            ["echo", "${NOT_INTERPOLATED}", "fallback", ""]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(
        warnings(&project),
        ["services.app.user: variable NOBODY is not set, so an empty string is used"]
    );
}

#[test]
fn bad_interpolation_is_rejected() {
    assert_eq!(
        error("services:\n  app:\n    image: alpine\n    command: echo $1\n"),
        "/srv/shop/compose.yaml:4: services.app.command: invalid interpolation in \"echo $1\": \
         `$` must be followed by a variable name, `{` or another `$`; write `$$` for a literal \
         `$`"
    );
    assert_eq!(
        error("services:\n  app:\n    image: alpine:${TAG\n"),
        "/srv/shop/compose.yaml:3: services.app.image: invalid interpolation in \
         \"alpine:${TAG\": `${` has no closing `}`; write `$$` for a literal `$`"
    );
    assert_eq!(
        error("services:\n  app:\n    image: alpine:${TAG:?}\n"),
        "/srv/shop/compose.yaml:3: services.app.image: variable TAG is required but not set: \
         set it before running mayfly"
    );
}

#[test]
fn ignored_and_unknown_keys_warn_once() {
    let project = parse(
        r#"
x-defaults: &defaults
  restart: always
  labels:
    team: shop
secrets:
  token:
    file: ./token
services:
  web:
    <<: *defaults
    image: nginx
    deploy:
      replicas: 2
    hostname: web
    imgae: typo
    x-note: extensions are silent
    healthcheck:
      test: ["CMD", "true"]
      retries: 1
      timeout_seconds: 5
    depends_on:
      db:
        condition: service_started
        wait: true
  db:
    <<: *defaults
    image: postgres
    build: ./db
"#,
    );
    assert_eq!(
        warnings(&project),
        [
            "secrets is ignored by mayfly",
            "services.web.restart is ignored by mayfly",
            "services.web.labels is ignored by mayfly",
            "services.web.deploy is ignored by mayfly",
            "services.web.hostname is ignored by mayfly",
            "services.web.imgae is not a Compose key and is ignored; did you mean image?",
            "services.web.healthcheck.timeout_seconds is not a Compose key and is ignored; \
             check its spelling",
            "services.web.depends_on.db.wait is not a Compose key and is ignored; check its \
             spelling",
            "services.db.restart is ignored by mayfly",
            "services.db.labels is ignored by mayfly",
            "services.db.build is ignored by mayfly: mayfly does not build images and runs the \
             image named by image",
        ]
    );
}

#[test]
fn merge_keys_prefer_explicit_values() {
    let service = only_service(
        r#"
x-base: &base
  image: busybox
  user: nobody
  working_dir: /base
x-more: &more
  working_dir: /more
  command: sleep 1
services:
  app:
    <<: [*more, *base]
    user: root
"#,
    );
    assert_eq!(service.image, "busybox");
    assert_eq!(service.user.as_deref(), Some("root"));
    assert_eq!(service.working_dir.as_deref(), Some("/more"));
    assert_eq!(
        service.command,
        Some(vec!["sleep".to_owned(), "1".to_owned()])
    );
}

#[test]
fn missing_or_unbuildable_images() {
    assert_eq!(
        error("services:\n  web:\n    ports: [\"80:80\"]\n"),
        "/srv/shop/compose.yaml:3: services.web: service \"web\" has no image; add `image:` \
         naming the image to run"
    );
    assert_eq!(
        error("services:\n  web:\n    build: .\n"),
        "/srv/shop/compose.yaml:3: services.web: service \"web\" has only `build:`, and mayfly \
         does not build images; build and push the image with another tool, then name it \
         with `image:`"
    );
}

#[test]
fn structural_errors() {
    assert_eq!(
        error(""),
        "/srv/shop/compose.yaml has no services; add a `services:` mapping with at least one \
         service"
    );
    assert_eq!(
        error("servics:\n  web:\n    image: busybox\n"),
        "/srv/shop/compose.yaml has no services (is `servics` a misspelling of `services`?); \
         add a `services:` mapping with at least one service"
    );
    assert_eq!(
        error("version: '3'\nservices: {}\n"),
        "/srv/shop/compose.yaml has no services; add a `services:` mapping with at least one \
         service"
    );
    assert_eq!(
        error("services:\n  - web\n"),
        "/srv/shop/compose.yaml:2: services: expected a mapping, found a sequence"
    );
    assert_eq!(
        error("services:\n  web:\n    image: [nginx]\n"),
        "/srv/shop/compose.yaml:3: services.web.image: expected a string, found a sequence"
    );
    assert_eq!(
        error("services:\n  web app:\n    image: nginx\n"),
        "/srv/shop/compose.yaml:3: services.web app: invalid service name \"web app\": use \
         letters, digits, `.`, `_` and `-`"
    );
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n    extends:\n      service: base\n"),
        "/srv/shop/compose.yaml:5: services.web.extends: extends is not supported by mayfly; \
         copy the settings of the extended service into this one"
    );
    assert_eq!(
        error("include:\n  - other.yaml\nservices:\n  web:\n    image: nginx\n"),
        "/srv/shop/compose.yaml:2: include: include is not supported by mayfly; copy the \
         included services into this file"
    );
    assert_eq!(
        error("services:\n  web:\n    image: nginx\n---\nservices: {}\n"),
        "/srv/shop/compose.yaml holds 2 YAML documents; mayfly reads one, so remove the `---` \
         separators"
    );
    assert_eq!(
        error("services:\n  web:\n    image: !custom nginx\n"),
        "/srv/shop/compose.yaml:3: services.web.image: the YAML tag !custom is not supported by \
         mayfly; remove the tag (only !reset and !override are understood)"
    );
}

#[test]
fn invalid_yaml_names_the_file_and_line() {
    let error = parse_with("services:\n  web:\n    image: nginx\n  image: [\n", &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "/srv/shop/compose.yaml is not valid YAML"
    );
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert!(cause.contains("line 5"), "{cause}");

    let duplicate = parse_with("services:\n  web:\n    image: a\n    image: b\n", &[]).unwrap_err();
    let cause = std::error::Error::source(&duplicate).unwrap().to_string();
    assert!(cause.contains("duplicated key"), "{cause}");
}

#[test]
fn project_names() {
    let named = parse("name: shop-dev\nservices:\n  web:\n    image: nginx\n");
    assert_eq!(named.name, "shop-dev");

    let from_env = parse_with(
        "name: shop-dev\nservices:\n  web:\n    image: nginx\n",
        &[("COMPOSE_PROJECT_NAME", "ci_42")],
    )
    .unwrap();
    assert_eq!(from_env.name, "ci_42");

    let interpolated = parse(
        "name: shop-dev\nservices:\n  web:\n    image: nginx\n    environment:\n      PROJECT: ${COMPOSE_PROJECT_NAME}\n",
    );
    assert_eq!(
        interpolated.services["web"].environment,
        [("PROJECT".to_owned(), "shop-dev".to_owned())]
    );

    let from_dir = ComposeProject::parse(
        "services:\n  web:\n    image: nginx\n",
        Path::new("/home/ann/My Shop.v2/compose.yaml"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(from_dir.name, "myshopv2");

    assert_eq!(
        error("name: Shop\nservices:\n  web:\n    image: nginx\n"),
        "/srv/shop/compose.yaml:1: name: invalid project name \"Shop\": use lowercase letters, \
         digits, `_` and `-`, starting with a letter or digit"
    );
}

#[test]
fn default_file_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let message = find_default_file(dir.path()).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "no Compose file found in {}: looked for compose.yaml, compose.yml, \
             docker-compose.yaml, docker-compose.yml; create one there or pass -f FILE",
            dir.path().display()
        )
    );

    std::fs::write(dir.path().join("docker-compose.yml"), "services: {}\n").unwrap();
    assert_eq!(
        find_default_file(dir.path()).unwrap(),
        dir.path().join("docker-compose.yml")
    );

    std::fs::write(dir.path().join("compose.yaml"), "services: {}\n").unwrap();
    assert_eq!(
        find_default_file(dir.path()).unwrap(),
        dir.path().join("compose.yaml")
    );
}

#[test]
fn load_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("compose.yaml");
    let error = ComposeProject::load(&missing).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("failed to read {}", missing.display())
    );
}

#[test]
fn dotenv_file_feeds_interpolation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# defaults for local runs\nTAG=11.4\nCOMPOSE_PROJECT_NAME=from_dotenv\nPORT=3306\n\
         GREETING=\"hello ${MISSING}\"\n",
    )
    .unwrap();
    let compose = dir.path().join("compose.yaml");
    let source = "services:\n  db:\n    image: mariadb:${TAG}\n    ports: [\"${PORT}:3306\"]\n    \
                  environment: [GREETING]\n";

    let project = ComposeProject::parse(source, &compose, &env(&[("PORT", "13306")])).unwrap();
    let db = &project.services["db"];
    assert_eq!(db.image, "mariadb:11.4");
    assert_eq!(db.ports[0].published, Some(13306));
    assert_eq!(
        db.environment,
        [("GREETING".to_owned(), "hello ".to_owned())]
    );
    assert_eq!(project.name, "from_dotenv");
    assert_eq!(
        warnings(&project),
        [format!(
            "{}: variable MISSING is not set, so an empty string is used",
            dir.path().join(".env").display()
        )]
    );

    std::fs::write(dir.path().join(".env"), "TAG='unclosed\n").unwrap();
    let message = ComposeProject::parse(source, &compose, &env(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        format!(
            "{}:1: invalid env file line: a quoted value has no closing quote",
            dir.path().join(".env").display()
        )
    );
}

#[test]
fn env_file_forms() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("common.env"),
        "LEVEL=info\nREGION=eu\nFROM_HOST\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("env")).unwrap();
    std::fs::write(dir.path().join("env/web.env"), "LEVEL=debug\nRAW=\"$x\"\n").unwrap();
    let compose = dir.path().join("compose.yaml");
    let source = r#"
services:
  web:
    image: nginx
    environment:
      REGION: us
    env_file:
      - common.env
      - path: ./env/web.env
        format: raw
      - path: ./missing.env
        required: false
  single:
    image: nginx
    env_file: common.env
"#;
    let project = ComposeProject::parse(source, &compose, &env(&[("FROM_HOST", "host")])).unwrap();
    let pairs = |items: &[(&str, &str)]| -> Vec<(String, String)> {
        items
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    };
    assert_eq!(
        project.services["web"].environment,
        pairs(&[
            ("LEVEL", "debug"),
            ("REGION", "us"),
            ("FROM_HOST", "host"),
            ("RAW", "\"$x\""),
        ])
    );
    assert_eq!(
        project.services["single"].environment,
        pairs(&[("LEVEL", "info"), ("REGION", "eu"), ("FROM_HOST", "host")])
    );
    assert!(project.warnings.is_empty(), "{:?}", project.warnings);

    let missing = "services:\n  web:\n    image: nginx\n    env_file: [absent.env]\n";
    let message = ComposeProject::parse(missing, &compose, &env(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        format!(
            "{}:4: services.web.env_file[0]: failed to read env file {}; create it or set \
             `required: false`",
            compose.display(),
            dir.path().join("absent.env").display()
        )
    );
}
