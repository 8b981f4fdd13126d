//! The command line's shape: every subcommand's arguments as clap types,
//! with their help. No behaviour: `commands` turns these into library calls.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Install k3s on machines that never see the internet, from one signed bundle.
///
/// On a connected machine, `airgap bundle build` pulls the pinned k3s binary and
/// every image the cluster needs into one signed tarball. On each disconnected
/// node, the bundle is verified (signature and every digest) before anything
/// is used.
#[derive(Parser, Debug)]
#[command(name = "airgap", version, max_term_width = 100)]
pub struct Cli {
    /// Log more (-v: info, -vv: debug); AIRGAP_LOG=<filter> overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a signing key pair (minisign format): NAME.key and NAME.pub.
    Keygen(KeygenArgs),
    /// Build, verify and inspect bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Install k3s from a bundle on this (disconnected) node.
    Install(Box<InstallArgs>),
    /// Print a server's join token, or write it to a file for the stick.
    Token(TokenArgs),
    /// Show this node's install: role, version, bundle, service, images.
    Status(StatusArgs),
    /// Stop k3s and remove exactly what `airgap install` wrote.
    Uninstall(UninstallArgs),
}

#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// The root k3s was installed under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Also remove the images the install put into containerd.
    #[arg(long)]
    pub purge_images: bool,
    /// Also delete k3s's own state in /var/lib/rancher/k3s (CA, token,
    /// datastore), as k3s-uninstall.sh does.
    #[arg(long)]
    pub purge_data: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The root k3s was installed under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The root the server was installed under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Write the token to FILE (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The server's address agents reach it by, for the printed command.
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://<this server's address>:6443"
    )]
    pub server: String,
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Build a signed bundle: k3s, its system images and the workloads' images.
    Build(Box<BuildArgs>),
    /// Check a bundle's signature and every entry against SHA256SUMS.
    Verify(VerifyArgs),
    /// Show what a bundle holds: version, platforms, images, files, sizes.
    Inspect(InspectArgs),
    /// Pin every wanted image to its current digest per platform in
    /// images.lock (--check: report drift, exit 1, write nothing).
    Lock(Box<LockArgs>),
    /// Check the manifests for what would make a node pull on site.
    Lint(LintArgs),
    /// Write a ready USB stick from a bundle: the bundle (in parts on FAT),
    /// this airgap binary, the public key and a README.txt with the commands.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The bundle: a file, or a split bundle's name (or any of its parts).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// The stick's directory (its mount point).
    #[arg(long, value_name = "DIR")]
    pub usb: PathBuf,
    /// Public key the bundle must verify with; copied to the stick.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Write the bundle in parts of at most SIZE (on FAT: 4 GiB - 1 unless given).
    #[arg(long, value_name = "SIZE", value_parser = parse_split)]
    pub split: Option<u64>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--skip-preflight`'s values: every check's name, and `all`.
fn preflight_check_names() -> clap::builder::PossibleValuesParser {
    let mut names: Vec<&'static str> = airgap_installer::preflight::CHECKS.to_vec();
    names.push("all");
    clap::builder::PossibleValuesParser::new(names)
}

/// `--split SIZE`: bytes, or K, M, G (powers of 1024), or `fat32`.
fn parse_split(text: &str) -> Result<u64, String> {
    airgap_bundle::split::parse_size(text).map_err(|e| format!("{e:#}"))
}

/// Where the password of a secret key comes from.
#[derive(Args, Debug)]
pub struct PasswordArgs {
    /// Read the key's password from the first line of this file. Without it,
    /// the password comes from AIRGAP_KEY_PASSWORD, or from a prompt when
    /// stdin is a terminal.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Base name of the key files: writes NAME.key (secret) and NAME.pub.
    #[arg(long, value_name = "NAME")]
    pub out: PathBuf,
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Store the secret key unencrypted (no password).
    #[arg(long, conflicts_with = "password_file")]
    pub no_password: bool,
    /// Overwrite existing key files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// k3s version: v1.20.6 (resolves to v1.20.6+k3s1) or a full v1.20.6+k3s1.
    #[arg(long, value_name = "VERSION")]
    pub version: String,
    /// Secret key to sign the bundle with (from `airgap keygen`).
    #[arg(long, value_name = "FILE")]
    pub sign_key: PathBuf,
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Target architecture(s): amd64, arm64, arm (comma-separated). Default: this host's.
    #[arg(long, value_delimiter = ',', value_name = "ARCH")]
    pub arch: Vec<String>,
    /// Output file. Default: k3s-<version>-linux-<arch>.airgap.tar.zst.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write the bundle in parts of at most SIZE (4000M, 1G, bytes, or fat32
    /// for 4 GiB - 1): FILE.part000, FILE.part001, … and their list FILE.parts.
    /// verify, inspect and install take FILE or any part.
    #[arg(long, value_name = "SIZE", value_parser = parse_split)]
    pub split: Option<u64>,
    /// Then also write a ready USB stick to DIR: the bundle (in parts when DIR
    /// is FAT), this airgap binary, the public key (NAME.pub for NAME.key)
    /// and a README.txt with the install commands.
    #[arg(long, value_name = "DIR")]
    pub usb: Option<PathBuf>,
    /// Base URL of the k3s release assets, in GitHub's layout
    /// (<URL>/<version>/<asset>).
    #[arg(long, value_name = "URL", default_value = airgap_bundler::release::GITHUB_RELEASES)]
    pub release_url: String,
    /// Where to fetch install.sh. Default: GitHub's raw file of that version,
    /// or <release-url>/<version>/install.sh for any other release URL.
    #[arg(long, value_name = "URL")]
    pub install_sh_url: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How the release server lays out a version's files: github
    /// (<URL>/<version>/<asset>) or cn, the mirror many users in China use
    /// (<URL>/k3s/<version with + as ->/<asset>, e.g. https://rancher-mirror.rancher.cn).
    #[arg(long, value_enum, value_name = "LAYOUT", default_value_t = ReleaseLayoutArg::Github)]
    pub release_layout: ReleaseLayoutArg,
    /// Download cache: blobs and release assets, each verified again before
    /// use. Default: $XDG_CACHE_HOME/airgap, else ~/.cache/airgap.
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache: Option<PathBuf>,
    /// Use no persistent cache: download everything into the build's
    /// staging directory.
    #[arg(long)]
    pub no_cache: bool,
    /// Write the bundle even if the output is up to date. Without it, a
    /// build whose inputs (lock, manifests, release listings, version,
    /// arches, compression, split, key, SOURCE_DATE_EPOCH) are those of the
    /// build that wrote the output, which is unchanged since, keeps it.
    #[arg(long)]
    pub rebuild: bool,
    /// Compression of the bundle.
    #[arg(long, value_enum, value_name = "KIND", default_value_t = CompressArg::Zstd)]
    pub compress: CompressArg,
    /// zstd level (1-19).
    #[arg(long, value_name = "LEVEL", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compress_level: i32,
    /// Parallel downloads.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Directory of the auto-deploy manifests whose images the bundle carries.
    #[arg(long, value_name = "DIR", default_value = "manifests")]
    pub manifests: PathBuf,
    /// The image lock: read, and written back with new pins.
    #[arg(long, value_name = "FILE", default_value = "images.lock")]
    pub lock: PathBuf,
    /// Fail, before downloading any image, unless images.lock pins exactly
    /// the wanted images for every requested platform; never write it.
    #[arg(long)]
    pub locked: bool,
    /// Only warn about :latest or untagged images without
    /// imagePullPolicy: IfNotPresent.
    #[arg(long)]
    pub allow_latest: bool,
    /// Follow manifests that are symbolic links, each reported as a warning
    /// (link -> target). Without it a linked manifest fails the build.
    #[arg(long)]
    pub follow_symlinks: bool,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a JSON summary on stdout (implies --quiet).
    #[arg(long)]
    pub json: bool,
}

/// Install k3s from a bundle: verify it while streaming (signature, then every
/// entry), import its images into containerd's k8s.io namespace, lay k3s down
/// as install.sh does, and start it. On any problem the host is left as it was.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
  airgap install --offline k3s.airgap.tar.zst --key site.pub --role server\n  \
  airgap install --offline k3s.airgap.tar.zst --key site.pub --role agent \\\n      \
  --server https://192.168.40.160:6443 --token-file node-token")]
pub struct InstallArgs {
    /// The bundle: a file, a split bundle's name (or any of its parts), or
    /// `-` for standard input (read once, verified as it streams).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Install without the network: the only mode there is (airgap never
    /// downloads; it opens no connection but containerd's socket and, for
    /// joins, the server URL). Accepted because it is how operators say it.
    #[arg(long)]
    pub offline: bool,
    /// Public key the bundle must be signed with.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "insecure_skip_signature"
    )]
    pub key: Option<PathBuf>,
    /// Refuse the key unless its id is ID: the key id or fingerprint you
    /// were given out of band, never one read off the stick.
    #[arg(long, value_name = "ID", env = "AIRGAP_KEY_ID", requires = "key")]
    pub expect_key_id: Option<String>,
    /// Install a bundle without checking its signature (checksums are still checked).
    #[arg(long)]
    pub insecure_skip_signature: bool,
    /// Server (control plane) or agent (worker). Default: agent when
    /// --server (K3S_URL) is given, else server, as k3s's install.sh does.
    #[arg(long, value_enum, value_name = "ROLE")]
    pub role: Option<RoleArg>,
    /// The server to join: https://<server>:6443 (K3S_URL).
    #[arg(long, value_name = "URL", env = "K3S_URL")]
    pub server: Option<String>,
    /// The join token (K3S_TOKEN); prefer --token-file.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "K3S_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the join token (K3S_TOKEN_FILE).
    #[arg(long, value_name = "FILE", env = "K3S_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Start a new HA cluster with embedded etcd (the first server).
    #[arg(long)]
    pub cluster_init: bool,
    /// This node's name in the cluster.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Which containerd gets the images.
    #[arg(long, value_enum, value_name = "RUNTIME", default_value_t = RuntimeArg::External)]
    pub runtime: RuntimeArg,
    /// containerd's socket (external runtime).
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
    /// Snapshotter the images are unpacked into.
    #[arg(long, value_name = "NAME", default_value = airgap_installer::import::DEFAULT_SNAPSHOTTER)]
    pub snapshotter: String,
    /// Put every host path under DIR (staging an SD-card image, tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Init system; detected when not given.
    #[arg(long, value_enum, value_name = "INIT")]
    pub init: Option<InitArg>,
    /// Skip a preflight check (repeatable; `all` skips every one).
    #[arg(long, value_name = "CHECK", value_parser = preflight_check_names())]
    pub skip_preflight: Vec<String>,
    /// Lay everything down but enable and start nothing.
    #[arg(long)]
    pub no_start: bool,
    /// Print the plan (files, images, units, commands) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Install even when the bundle is older than the installed one (an
    /// older k3s version, or the same one built earlier).
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Seconds to wait for k3s to become ready.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub wait: u64,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Extra k3s flags, after `--`.
    #[arg(last = true, value_name = "K3S_FLAGS")]
    pub k3s_args: Vec<String>,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum RoleArg {
    Server,
    Agent,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum RuntimeArg {
    /// A containerd the host already runs.
    External,
    /// k3s's own containerd (images as an archive it imports at start).
    Embedded,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum InitArg {
    Systemd,
    Openrc,
    None,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ReleaseLayoutArg {
    Github,
    Cn,
}

impl From<ReleaseLayoutArg> for airgap_bundler::release::ReleaseLayout {
    fn from(arg: ReleaseLayoutArg) -> Self {
        match arg {
            ReleaseLayoutArg::Github => Self::Github,
            ReleaseLayoutArg::Cn => Self::Cn,
        }
    }
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum CompressArg {
    Zstd,
    None,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The bundle: a file, or a split bundle's name (or any of its parts).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Public key the bundle must be signed with.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Refuse the key unless its id is ID (the fingerprint you were given
    /// out of band).
    #[arg(long, value_name = "ID", env = "AIRGAP_KEY_ID")]
    pub expect_key_id: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// How to reach registries, for `bundle build` and `bundle lock` alike.
#[derive(Args, Debug)]
pub struct RegistryArgs {
    /// Pull images of HOST from a mirror: docker.io=https://mirror.example (repeatable).
    #[arg(long, value_name = "HOST=URL")]
    pub registry_mirror: Vec<String>,
    /// Talk plain HTTP to this registry host (a local registry) (repeatable).
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Credentials for a registry host (as contacted, e.g. a mirror's): the
    /// password is the first line of PASSFILE (repeatable). Without it, the
    /// docker config ($DOCKER_CONFIG/config.json, ~/.docker/config.json) is used.
    #[arg(long, value_name = "HOST=USER:PASSFILE")]
    pub registry_auth: Vec<String>,
    /// Also trust this CA (PEM) for registries over HTTPS (repeatable).
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Vec<PathBuf>,
    /// Seconds a registry may send nothing (no answer, or no bytes of a
    /// download) before the request is given up and retried.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub registry_timeout: u64,
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// k3s version whose system images the lock pins.
    #[arg(long, value_name = "VERSION")]
    pub version: String,
    /// Platforms to pin: amd64, arm64, arm (comma-separated). Default: this
    /// host's. Platforms an entry already pins are refreshed too.
    #[arg(long, value_delimiter = ',', value_name = "ARCH")]
    pub arch: Vec<String>,
    /// Report what differs (moved tags, missing or extra entries) and exit 1
    /// if anything does; never write.
    #[arg(long)]
    pub check: bool,
    /// Base URL of the k3s release assets.
    #[arg(long, value_name = "URL", default_value = airgap_bundler::release::GITHUB_RELEASES)]
    pub release_url: String,
    /// How the release server lays out a version's files, as for `bundle
    /// build`: github (<URL>/<version>/<asset>) or cn (<URL>/k3s/<version
    /// with + as ->/<asset>).
    #[arg(long, value_enum, value_name = "LAYOUT", default_value_t = ReleaseLayoutArg::Github)]
    pub release_layout: ReleaseLayoutArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Directory of the auto-deploy manifests.
    #[arg(long, value_name = "DIR", default_value = "manifests")]
    pub manifests: PathBuf,
    /// The image lock.
    #[arg(long, value_name = "FILE", default_value = "images.lock")]
    pub lock: PathBuf,
    /// Tags resolved at once.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LintArgs {
    /// Directory of the auto-deploy manifests.
    #[arg(long, value_name = "DIR", default_value = "manifests")]
    pub manifests: PathBuf,
    /// The image lock the manifests' images must be in.
    #[arg(long, value_name = "FILE", default_value = "images.lock")]
    pub lock: PathBuf,
    /// Only warn about :latest or untagged images without
    /// imagePullPolicy: IfNotPresent.
    #[arg(long)]
    pub allow_latest: bool,
    /// Print the findings as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The bundle: a file, or a split bundle's name (or any of its parts).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Also check the signature with this public key.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Print as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
