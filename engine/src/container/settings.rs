//! Folding a definition's changes over the image config into the settings of one process:
//! environment, working directory, user, command, mounts and new files, with Docker's rules.

use std::path::{Component, Path, PathBuf};

use mayfly_image::manifest::ImageConfig;

use super::ContainerError;
use crate::definition::{Change, Definition};
use crate::runtime::DEFAULT_PATH;

/// A bind or tmpfs mount requested by the definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountRequest {
    Bind {
        source: PathBuf,
        destination: String,
        read_only: bool,
    },
    Tmpfs {
        destination: String,
        options: Vec<String>,
    },
}

/// A file the definition writes into the container, with an absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    pub path: String,
    pub contents: String,
    pub permissions: u32,
}

/// The settings in force after every change of a definition.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `KEY=VALUE` pairs in order of first appearance.
    pub env: Vec<(String, String)>,
    pub workdir: String,
    /// User as written (`NAME[:GROUP]`), resolved later against the image's files.
    pub user: String,
    pub entrypoint: Vec<String>,
    pub default_args: Vec<String>,
    pub mounts: Vec<MountRequest>,
    pub files: Vec<FileRequest>,
}

impl Settings {
    /// Starts from the image config: Env, WorkingDir, User, Entrypoint and Cmd.
    pub fn from_image(config: &ImageConfig) -> Self {
        let container = config.config.clone().unwrap_or_default();
        let mut settings = Settings {
            workdir: container
                .working_dir
                .filter(|dir| !dir.is_empty())
                .unwrap_or_else(|| "/".to_owned()),
            user: container.user.unwrap_or_default(),
            entrypoint: container.entrypoint.unwrap_or_default(),
            default_args: container.cmd.unwrap_or_default(),
            ..Settings::default()
        };
        for pair in container.env.unwrap_or_default() {
            let (name, value) = pair.split_once('=').unwrap_or((&pair, ""));
            settings.set_env(name, value);
        }
        settings
    }

    /// Applies every change of `definition` except exec steps, which the caller runs.
    pub fn apply_all(&mut self, definition: &Definition) -> Result<(), ContainerError> {
        for change in &definition.changes {
            self.apply(change)?;
        }
        Ok(())
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &Change) -> Result<(), ContainerError> {
        match change {
            Change::Workdir { path } => self.workdir = self.absolute(path)?,
            Change::Env { name, value } => self.set_env(name, value),
            Change::WithoutEnv { name } => self.env.retain(|(key, _)| key != name),
            Change::NewFile {
                path,
                contents,
                permissions,
            } => {
                let path = self.absolute(path)?;
                self.files.retain(|file| file.path != path);
                self.files.push(FileRequest {
                    path,
                    contents: contents.clone(),
                    permissions: *permissions,
                });
            }
            Change::MountedDirectory {
                path,
                source,
                read_only,
            } => {
                let destination = self.absolute(path)?;
                self.mounts.push(MountRequest::Bind {
                    source: PathBuf::from(source),
                    destination,
                    read_only: *read_only,
                });
            }
            Change::Tmpfs { path, options } => {
                let destination = self.absolute(path)?;
                self.mounts.push(MountRequest::Tmpfs {
                    destination,
                    options: options.clone(),
                });
            }
            Change::User { user } => self.user = user.clone(),
            Change::Entrypoint { args } => {
                // As with `docker run --entrypoint`, a new entrypoint drops the image's Cmd.
                self.entrypoint = args.clone();
                self.default_args.clear();
            }
            Change::DefaultArgs { args } => self.default_args = args.clone(),
            Change::Exec { .. }
            | Change::ExposedPort(_)
            | Change::WithoutExposedPort { .. }
            | Change::Label { .. }
            | Change::ServiceBinding { .. }
            | Change::Service(_) => {}
        }
        Ok(())
    }

    pub fn set_env(&mut self, name: &str, value: &str) {
        match self.env.iter_mut().find(|(key, _)| key == name) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.env.push((name.to_owned(), value.to_owned())),
        }
    }

    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Returns the environment as `KEY=VALUE`, with Docker's default `PATH` when none is set.
    pub fn env_list(&self) -> Vec<String> {
        let mut list: Vec<String> = self
            .env
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        if self.env_value("PATH").is_none() {
            list.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        list
    }

    /// The command line: the entrypoint followed by `args`, or by the default arguments
    /// when `args` is `None`.
    pub fn command(&self, args: Option<&[String]>) -> Result<Vec<String>, ContainerError> {
        let mut command = self.entrypoint.clone();
        command.extend_from_slice(args.unwrap_or(&self.default_args));
        if command.is_empty() {
            return Err(ContainerError::NoCommand);
        }
        Ok(command)
    }

    /// Resolves `path` against the working directory and normalises `.` and `..`.
    fn absolute(&self, path: &str) -> Result<String, ContainerError> {
        if path.is_empty() {
            return Err(ContainerError::InvalidPath {
                path: path.to_owned(),
                reason: "the path is empty",
            });
        }
        let joined = Path::new(&self.workdir).join(path);
        let mut parts: Vec<String> = Vec::new();
        for component in joined.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                Component::ParentDir => {
                    parts.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        Ok(format!("/{}", parts.join("/")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_image::manifest::ContainerConfig;

    fn image(config: ContainerConfig) -> ImageConfig {
        let mut image = ImageConfig::parse(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        image.config = Some(config);
        image
    }

    #[test]
    fn settings_follow_docker_rules() {
        let config = image(ContainerConfig {
            env: Some(vec!["PATH=/bin".into(), "LANG=C.UTF-8".into()]),
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            working_dir: Some("/app".into()),
            ..ContainerConfig::default()
        });
        let mut settings = Settings::from_image(&config);
        assert_eq!(settings.command(None).unwrap(), vec!["/entry", "serve"]);
        assert_eq!(
            settings.command(Some(&["x".to_owned()])).unwrap(),
            vec!["/entry", "x"]
        );

        settings
            .apply(&Change::Env {
                name: "LANG".into(),
                value: "en".into(),
            })
            .unwrap();
        settings
            .apply(&Change::NewFile {
                path: "conf/a.txt".into(),
                contents: "a".into(),
                permissions: 0o644,
            })
            .unwrap();
        settings
            .apply(&Change::Entrypoint { args: vec![] })
            .unwrap();
        assert_eq!(settings.env_list(), vec!["PATH=/bin", "LANG=en"]);
        assert_eq!(settings.files[0].path, "/app/conf/a.txt");
        assert!(matches!(
            settings.command(None),
            Err(ContainerError::NoCommand)
        ));
    }

    #[test]
    fn settings_default_path_and_workdir() {
        let settings = Settings::from_image(&image(ContainerConfig::default()));
        assert_eq!(settings.workdir, "/");
        assert_eq!(settings.env_list(), vec![format!("PATH={DEFAULT_PATH}")]);
    }

    #[test]
    fn settings_normalise_paths() {
        let mut settings = Settings::from_image(&image(ContainerConfig::default()));
        settings
            .apply(&Change::Workdir {
                path: "/srv/../opt/./app".into(),
            })
            .unwrap();
        assert_eq!(settings.workdir, "/opt/app");
        settings
            .apply(&Change::Workdir {
                path: "../../../..".into(),
            })
            .unwrap();
        assert_eq!(settings.workdir, "/");
    }
}
