//! The `airgap` command line: parses arguments, sets up logging, calls one
//! library function per subcommand and prints its result. No logic of its own.
#![forbid(unsafe_code)]

use airgap_bundle::write::Compression;
use airgap_bundler::build::{build, BuildOptions};
use airgap_bundler::registry::RegistryConfig;
use airgap_bundler::release::ReleaseSource;
use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

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
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
struct UninstallArgs {
    /// The root k3s was installed under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Also remove the images the install put into containerd.
    #[arg(long)]
    purge_images: bool,
    /// Also delete k3s's own state in /var/lib/rancher/k3s (CA, token,
    /// datastore), as k3s-uninstall.sh does.
    #[arg(long)]
    purge_data: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The root k3s was installed under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Print as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The root the server was installed under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Write the token to FILE (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The server's address agents reach it by, for the printed command.
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://<this server's address>:6443"
    )]
    server: String,
}

#[derive(Subcommand, Debug)]
enum BundleCommand {
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
struct ExportArgs {
    /// The bundle: a file, or a split bundle's name (or any of its parts).
    bundle: PathBuf,
    /// The stick's directory (its mount point).
    #[arg(long, value_name = "DIR")]
    usb: PathBuf,
    /// Public key the bundle must verify with; copied to the stick.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Write the bundle in parts of at most SIZE (on FAT: 4 GiB - 1 unless given).
    #[arg(long, value_name = "SIZE", value_parser = parse_split)]
    split: Option<u64>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `--split SIZE`: bytes, or K, M, G (powers of 1024), or `fat32`.
fn parse_split(text: &str) -> Result<u64, String> {
    airgap_bundle::split::parse_size(text).map_err(|e| format!("{e:#}"))
}

/// Where the password of a secret key comes from.
#[derive(Args, Debug)]
struct PasswordArgs {
    /// Read the key's password from the first line of this file. Without it,
    /// the password comes from AIRGAP_KEY_PASSWORD, or from a prompt when
    /// stdin is a terminal.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Base name of the key files: writes NAME.key (secret) and NAME.pub.
    #[arg(long, value_name = "NAME")]
    out: PathBuf,
    #[command(flatten)]
    password: PasswordArgs,
    /// Store the secret key unencrypted (no password).
    #[arg(long, conflicts_with = "password_file")]
    no_password: bool,
    /// Overwrite existing key files.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// k3s version: v1.20.6 (resolves to v1.20.6+k3s1) or a full v1.20.6+k3s1.
    #[arg(long)]
    version: String,
    /// Secret key to sign the bundle with (from `airgap keygen`).
    #[arg(long, value_name = "FILE")]
    sign_key: PathBuf,
    #[command(flatten)]
    password: PasswordArgs,
    /// Target architecture(s): amd64, arm64, arm (comma-separated). Default: this host's.
    #[arg(long, value_delimiter = ',', value_name = "ARCH")]
    arch: Vec<String>,
    /// Output file. Default: k3s-<version>-linux-<arch>.airgap.tar.zst.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write the bundle in parts of at most SIZE (4000M, 1G, bytes, or fat32
    /// for 4 GiB - 1): FILE.part000, FILE.part001, … and their list FILE.parts.
    /// verify, inspect and install take FILE or any part.
    #[arg(long, value_name = "SIZE", value_parser = parse_split)]
    split: Option<u64>,
    /// Then also write a ready USB stick to DIR: the bundle (in parts when DIR
    /// is FAT), this airgap binary, the public key (NAME.pub for NAME.key)
    /// and a README.txt with the install commands.
    #[arg(long, value_name = "DIR")]
    usb: Option<PathBuf>,
    /// Base URL of the k3s release assets, in GitHub's layout
    /// (<URL>/<version>/<asset>).
    #[arg(long, value_name = "URL", default_value = airgap_bundler::release::GITHUB_RELEASES)]
    release_url: String,
    /// Where to fetch install.sh. Default: GitHub's raw file of that version,
    /// or <release-url>/<version>/install.sh for any other release URL.
    #[arg(long, value_name = "URL")]
    install_sh_url: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// How the release server lays out a version's files: github
    /// (<URL>/<version>/<asset>) or cn, the mirror many users in China use
    /// (<URL>/k3s/<version with + as ->/<asset>, e.g. https://rancher-mirror.rancher.cn).
    #[arg(long, value_enum, default_value_t = ReleaseLayoutArg::Github)]
    release_layout: ReleaseLayoutArg,
    /// Download cache: blobs and release assets, each verified again before
    /// use. Default: $XDG_CACHE_HOME/airgap, else ~/.cache/airgap.
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache: Option<PathBuf>,
    /// Use no persistent cache: download everything into the build's
    /// staging directory.
    #[arg(long)]
    no_cache: bool,
    /// Write the bundle even if the output is up to date. Without it, a
    /// build whose inputs (lock, manifests, release listings, version,
    /// arches, compression, split, key, SOURCE_DATE_EPOCH) are those of the
    /// build that wrote the output, which is unchanged since, keeps it.
    #[arg(long)]
    rebuild: bool,
    /// Compression of the bundle.
    #[arg(long, value_enum, default_value_t = CompressArg::Zstd)]
    compress: CompressArg,
    /// zstd level (1-19).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    compress_level: i32,
    /// Parallel downloads.
    #[arg(long, short = 'j', default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Directory of the auto-deploy manifests whose images the bundle carries.
    #[arg(long, value_name = "DIR", default_value = "manifests")]
    manifests: PathBuf,
    /// The image lock: read, and written back with new pins.
    #[arg(long, value_name = "FILE", default_value = "images.lock")]
    lock: PathBuf,
    /// Fail, before downloading any image, unless images.lock pins exactly
    /// the wanted images for every requested platform; never write it.
    #[arg(long)]
    locked: bool,
    /// Only warn about :latest or untagged images without
    /// imagePullPolicy: IfNotPresent.
    #[arg(long)]
    allow_latest: bool,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    /// Print a JSON summary on stdout (implies --quiet).
    #[arg(long)]
    json: bool,
}

/// Install k3s from a bundle: verify it while streaming (signature, then every
/// entry), import its images into containerd's k8s.io namespace, lay k3s down
/// as install.sh does, and start it. On any problem the host is left as it was.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
  airgap install --offline k3s.airgap.tar.zst --key site.pub --role server\n  \
  airgap install --offline k3s.airgap.tar.zst --key site.pub --role agent \\\n      \
  --server https://192.168.40.160:6443 --token-file node-token")]
struct InstallArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// Open no network connection but containerd's socket and, for joins,
    /// the server URL. Required: airgap installs never download.
    #[arg(long)]
    offline: bool,
    /// Public key the bundle must be signed with.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "insecure_skip_signature"
    )]
    key: Option<PathBuf>,
    /// Install a bundle without checking its signature (checksums are still checked).
    #[arg(long)]
    insecure_skip_signature: bool,
    /// Server (control plane) or agent (worker).
    #[arg(long, value_enum)]
    role: RoleArg,
    /// The server to join: https://<server>:6443 (K3S_URL).
    #[arg(long, value_name = "URL", env = "K3S_URL")]
    server: Option<String>,
    /// The join token (K3S_TOKEN); prefer --token-file.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "K3S_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the join token (K3S_TOKEN_FILE).
    #[arg(long, value_name = "FILE", env = "K3S_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Start a new HA cluster with embedded etcd (the first server).
    #[arg(long)]
    cluster_init: bool,
    /// This node's name in the cluster.
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Which containerd gets the images.
    #[arg(long, value_enum, default_value_t = RuntimeArg::External)]
    runtime: RuntimeArg,
    /// containerd's socket (external runtime).
    #[arg(long, value_name = "PATH")]
    containerd_socket: Option<PathBuf>,
    /// Snapshotter the images are unpacked into.
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Put every host path under DIR (staging an SD-card image, tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Init system; detected when not given.
    #[arg(long, value_enum)]
    init: Option<InitArg>,
    /// Skip a preflight check (repeatable; `all` skips every one).
    #[arg(long, value_name = "CHECK")]
    skip_preflight: Vec<String>,
    /// Lay everything down but enable and start nothing.
    #[arg(long)]
    no_start: bool,
    /// Print the plan (files, images, units, commands) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for k3s to become ready.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    wait: u64,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Extra k3s flags, after `--`.
    #[arg(last = true, value_name = "K3S_FLAGS")]
    k3s_args: Vec<String>,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum RoleArg {
    Server,
    Agent,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum RuntimeArg {
    /// A containerd the host already runs.
    External,
    /// k3s's own containerd (images as an archive it imports at start).
    Embedded,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum InitArg {
    Systemd,
    Openrc,
    None,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum ReleaseLayoutArg {
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
enum CompressArg {
    Zstd,
    None,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The bundle file.
    file: PathBuf,
    /// Public key the bundle must be signed with.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// How to reach registries, for `bundle build` and `bundle lock` alike.
#[derive(Args, Debug)]
struct RegistryArgs {
    /// Pull images of HOST from a mirror: docker.io=https://mirror.example (repeatable).
    #[arg(long, value_name = "HOST=URL")]
    registry_mirror: Vec<String>,
    /// Talk plain HTTP to this registry host (a local registry) (repeatable).
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
    /// Credentials for a registry host (as contacted, e.g. a mirror's): the
    /// password is the first line of PASSFILE (repeatable). Without it, the
    /// docker config ($DOCKER_CONFIG/config.json, ~/.docker/config.json) is used.
    #[arg(long, value_name = "HOST=USER:PASSFILE")]
    registry_auth: Vec<String>,
    /// Also trust this CA (PEM) for registries over HTTPS (repeatable).
    #[arg(long, value_name = "FILE")]
    registry_ca: Vec<PathBuf>,
    /// Seconds a registry may send nothing (no answer, or no bytes of a
    /// download) before the request is given up and retried.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    registry_timeout: u64,
}

impl RegistryArgs {
    /// The registry client's settings, with `jobs` parallel pulls.
    fn config(&self, jobs: u16) -> anyhow::Result<RegistryConfig> {
        Ok(RegistryConfig {
            mirrors: self
                .registry_mirror
                .iter()
                .map(|m| airgap_bundler::registry::parse_mirror(m))
                .collect::<anyhow::Result<Vec<_>>>()?,
            insecure: self.insecure_registry.clone(),
            jobs: jobs as usize,
            credentials: airgap_bundler::auth::Credentials::load(
                &self.registry_auth,
                airgap_bundler::auth::docker_config_dir().as_deref(),
            )?,
            ca_files: self.registry_ca.clone(),
            read_timeout: std::time::Duration::from_secs(self.registry_timeout),
        })
    }
}

#[derive(Args, Debug)]
struct LockArgs {
    /// k3s version whose system images the lock pins.
    #[arg(long)]
    version: String,
    /// Platforms to pin: amd64, arm64, arm (comma-separated). Default: this
    /// host's. Platforms an entry already pins are refreshed too.
    #[arg(long, value_delimiter = ',', value_name = "ARCH")]
    arch: Vec<String>,
    /// Report what differs (moved tags, missing or extra entries) and exit 1
    /// if anything does; never write.
    #[arg(long)]
    check: bool,
    /// Base URL of the k3s release assets.
    #[arg(long, value_name = "URL", default_value = airgap_bundler::release::GITHUB_RELEASES)]
    release_url: String,
    /// How the release server lays out a version's files, as for `bundle
    /// build`: github (<URL>/<version>/<asset>) or cn (<URL>/k3s/<version
    /// with + as ->/<asset>).
    #[arg(long, value_enum, default_value_t = ReleaseLayoutArg::Github)]
    release_layout: ReleaseLayoutArg,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Directory of the auto-deploy manifests.
    #[arg(long, value_name = "DIR", default_value = "manifests")]
    manifests: PathBuf,
    /// The image lock.
    #[arg(long, value_name = "FILE", default_value = "images.lock")]
    lock: PathBuf,
    /// Tags resolved at once.
    #[arg(long, short = 'j', default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct LintArgs {
    /// Directory of the auto-deploy manifests.
    #[arg(long, value_name = "DIR", default_value = "manifests")]
    manifests: PathBuf,
    /// The image lock the manifests' images must be in.
    #[arg(long, value_name = "FILE", default_value = "images.lock")]
    lock: PathBuf,
    /// Only warn about :latest or untagged images without
    /// imagePullPolicy: IfNotPresent.
    #[arg(long)]
    allow_latest: bool,
    /// Print the findings as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The bundle file.
    file: PathBuf,
    /// Also check the signature with this public key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Print as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRGAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen(args) => keygen(args),
        Command::Bundle(BundleCommand::Build(args)) => bundle_build(*args),
        Command::Bundle(BundleCommand::Lock(args)) => bundle_lock(*args),
        Command::Bundle(BundleCommand::Lint(args)) => bundle_lint(args),
        Command::Bundle(BundleCommand::Export(args)) => {
            let public_key = airgap_bundle::sign::load_public_key(&args.key)?;
            let key_name = args
                .key
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "site.pub".into());
            let stick = airgap_bundler::usb::write_stick(
                &args.bundle,
                &airgap_bundler::usb::UsbOptions {
                    dir: args.usb,
                    split: args.split,
                    public_key,
                    key_name,
                },
            )?;
            print_result(&stick, args.json)
        }
        Command::Install(args) => install(*args),
        Command::Token(args) => token(args),
        Command::Uninstall(args) => {
            let opts = airgap_installer::uninstall::UninstallOptions {
                root: args.root,
                purge_images: args.purge_images,
                purge_data: args.purge_data,
            };
            let report =
                airgap_installer::uninstall::uninstall(&opts, &airgap_installer::run::HostRunner)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for r in &report.removed {
                    eprintln!("removed {r}");
                }
                for k in &report.kept_modified {
                    eprintln!("kept {k} (changed since it was installed)");
                }
                for i in &report.images_removed {
                    eprintln!("removed image {i}");
                }
                eprintln!("k3s: {}", report.service);
            }
            Ok(())
        }
        Command::Status(args) => {
            let status = airgap_installer::status::status(&args.root)?;
            print_result(&status, args.json)
        }
        Command::Bundle(BundleCommand::Verify(args)) => {
            let key = airgap_bundle::sign::load_public_key(&args.key)?;
            let verified = airgap_bundle::inspect::verify_file(&args.file, key)?;
            print_result(&verified, args.json)
        }
        Command::Bundle(BundleCommand::Inspect(args)) => {
            let key = args
                .key
                .as_deref()
                .map(airgap_bundle::sign::load_public_key)
                .transpose()?;
            let inspection = airgap_bundle::inspect::inspect_file(&args.file, key)?;
            print_result(&inspection, args.json)
        }
    }
}

fn print_result<T: serde::Serialize + std::fmt::Display>(
    value: &T,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{value}");
    }
    Ok(())
}

/// The password for a key: a file, the environment, or a prompt when a
/// person is at the terminal; never a prompt otherwise.
fn key_password(args: &PasswordArgs, what: &str, confirm: bool) -> anyhow::Result<Option<String>> {
    if let Some(file) = &args.password_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading password file {}", file.display()))?;
        let pw = text.lines().next().unwrap_or_default().to_string();
        if pw.is_empty() {
            bail!("password file {} is empty", file.display());
        }
        return Ok(Some(pw));
    }
    if let Ok(pw) = std::env::var("AIRGAP_KEY_PASSWORD") {
        return Ok(Some(pw));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let pw = rpassword::prompt_password(format!("password for {what}: "))?;
    if confirm && rpassword::prompt_password("again: ")? != pw {
        bail!("the passwords differ");
    }
    Ok(Some(pw))
}

fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let password = if args.no_password {
        None
    } else {
        match key_password(&args.password, "the new secret key", true)? {
            Some(pw) => Some(pw),
            None => bail!(
                "no password for the new key: give --password-file FILE, set AIRGAP_KEY_PASSWORD, \
                 or pass --no-password for an unencrypted key"
            ),
        }
    };
    let keys = airgap_bundle::sign::generate(password)?;
    let with_ext = |ext: &str| {
        let mut name = args.out.clone().into_os_string();
        name.push(ext);
        PathBuf::from(name)
    };
    let (sk_path, pk_path) = (with_ext(".key"), with_ext(".pub"));
    for path in [&sk_path, &pk_path] {
        if path.exists() && !args.force {
            bail!("{} exists (use --force to overwrite)", path.display());
        }
    }
    write_private(&sk_path, keys.secret_key_file.as_bytes())?;
    std::fs::write(&pk_path, keys.public_key_file.as_bytes())
        .with_context(|| format!("writing {}", pk_path.display()))?;
    eprintln!(
        "wrote {} (secret, keep it on the build machine) and {} (public, put it on the stick)",
        sk_path.display(),
        pk_path.display()
    );
    eprintln!("key id {}", keys.key_id);
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn bundle_build(args: BuildArgs) -> anyhow::Result<()> {
    let key_password = key_password(&args.password, &args.sign_key.display().to_string(), false)?;
    let arches = if args.arch.is_empty() {
        vec![airgap_bundle::oci::host_arch().to_string()]
    } else {
        args.arch.clone()
    };
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Some(
            v.parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))?,
        ),
        Err(_) => None,
    };
    let usb = match &args.usb {
        Some(dir) => {
            // The stick's key comes from the signing key, checked before the build.
            let sk = airgap_bundle::sign::load_secret_key(&args.sign_key, key_password.clone())?;
            let public_key = airgap_bundle::sign::PublicKey::from_secret_key(&sk)
                .map_err(|e| anyhow::anyhow!("deriving the public key: {e}"))?;
            let key_name = format!(
                "{}.pub",
                args.sign_key
                    .file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "site".into())
            );
            Some(airgap_bundler::usb::UsbOptions {
                dir: dir.clone(),
                split: args.split,
                public_key,
                key_name,
            })
        }
        None => None,
    };
    let opts = BuildOptions {
        version: args.version.clone(),
        arches,
        output: args.output.clone(),
        split: args.split,
        sign_key: args.sign_key.clone(),
        key_password,
        release: ReleaseSource {
            base_url: args.release_url.clone(),
            install_sh_url: args.install_sh_url.clone(),
            layout: args.release_layout.into(),
        },
        registry: args.registry.config(args.jobs)?,
        cache: if args.no_cache {
            None
        } else {
            Some(
                args.cache
                    .clone()
                    .or_else(airgap_bundler::cache::default_dir)
                    .context("no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache DIR or --no-cache")?,
            )
        },
        compression: match args.compress {
            CompressArg::None => Compression::None,
            CompressArg::Zstd => Compression::Zstd {
                level: args.compress_level,
                threads: std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1),
            },
        },
        jobs: args.jobs as usize,
        manifests_dir: args.manifests.clone(),
        lock_path: args.lock.clone(),
        source_date_epoch,
        rebuild: args.rebuild,
    };
    let progress = airgap_bundler::progress::progress_for(args.quiet || args.json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let checks = airgap_bundler::locking::BuildChecks {
        locked: args.locked,
        allow_latest: args.allow_latest,
    };
    let summary = build(&opts, &checks, progress.as_ref(), runtime.handle())?;
    if let Some(usb) = &usb {
        let stick = airgap_bundler::usb::write_stick(&summary.file, usb)?;
        if args.json {
            let both = serde_json::json!({ "bundle": summary, "usb": stick });
            println!("{}", serde_json::to_string_pretty(&both)?);
            return Ok(());
        } else if !args.quiet {
            eprintln!("{stick}");
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !args.quiet {
        eprintln!(
            "{} {} ({}, {} images, {} distinct blobs, {} saved by sharing layers)",
            if summary.up_to_date {
                "up to date, kept"
            } else {
                "built"
            },
            summary.file.display(),
            airgap_bundle::inspect::human_bytes(summary.size),
            summary.images.len(),
            summary.blobs,
            airgap_bundle::inspect::human_bytes(summary.dedup_saved_bytes),
        );
        if let (Some(first), Some(last)) = (summary.parts.first(), summary.parts.last()) {
            eprintln!(
                "  in {} parts, {} to {}, listed in {}.parts",
                summary.parts.len(),
                first.display(),
                last.display(),
                summary.file.display()
            );
        }
        if summary.lock_updated {
            eprintln!("pinned new digests in {}", opts.lock_path.display());
        }
    }
    Ok(())
}

fn bundle_lock(args: LockArgs) -> anyhow::Result<()> {
    let arches = if args.arch.is_empty() {
        vec![airgap_bundle::oci::host_arch().to_string()]
    } else {
        args.arch.clone()
    };
    let opts = airgap_bundler::locking::LockOptions {
        version: args.version,
        arches,
        release: ReleaseSource {
            base_url: args.release_url,
            install_sh_url: None,
            layout: args.release_layout.into(),
        },
        registry: args.registry.config(args.jobs)?,
        manifests_dir: args.manifests,
        lock_path: args.lock,
        check: args.check,
        jobs: args.jobs as usize,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = airgap_bundler::locking::lock(&opts, runtime.handle())?;
    print_result(&report, args.json)?;
    if report.check && !report.changes.is_empty() {
        bail!(
            "{} does not match the registries: {} difference(s); run `airgap bundle lock` to update it",
            report.lock.display(),
            report.changes.len()
        );
    }
    Ok(())
}

fn bundle_lint(args: LintArgs) -> anyhow::Result<()> {
    let opts = airgap_bundler::lint::LintOptions {
        allow_latest: args.allow_latest,
        ..Default::default()
    };
    let report = airgap_bundler::lint::lint_files(&args.manifests, &args.lock, &opts)?;
    print_result(&report, args.json)?;
    if report.errors > 0 {
        bail!(
            "{} offline-readiness error(s) in {}",
            report.errors,
            args.manifests.display()
        );
    }
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let root = airgap_installer::root::HostRoot::new(&args.root)?;
    let token = airgap_installer::join::server_token(&root)?;
    let token_arg = match &args.out {
        Some(out) => {
            write_private(out, format!("{token}\n").as_bytes())?;
            eprintln!(
                "wrote the join token to {} (mode 0600); carry it to the agents",
                out.display()
            );
            let record = airgap_installer::record::InstallRecord::load(&root)?;
            if let Some(cluster) = record.and_then(|r| r.cluster) {
                let path = airgap_installer::cluster::cluster_file_for(out);
                std::fs::write(&path, serde_json::to_string_pretty(&cluster)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!(
                    "wrote the cluster's critical flags to {} (joining servers check theirs against it)",
                    path.display()
                );
            }
            format!("--token-file {}", out.display())
        }
        None => {
            println!("{token}");
            "--token-file <file holding the token above>".to_string()
        }
    };
    eprintln!(
        "on each agent:\n  airgap install --offline <bundle> --key <site.pub> --role agent --server {} {token_arg}",
        args.server
    );
    Ok(())
}

fn install(args: InstallArgs) -> anyhow::Result<()> {
    use airgap_installer::install::{InstallOptions, Runtime};
    use airgap_installer::layout::Role;
    use airgap_installer::service::Init;
    if !args.offline {
        bail!("airgap installs only offline: pass --offline (nothing is ever downloaded)");
    }
    let opts = InstallOptions {
        bundle: args.bundle,
        key: args.key,
        insecure_skip_signature: args.insecure_skip_signature,
        role: match args.role {
            RoleArg::Server => Role::Server,
            RoleArg::Agent => Role::Agent,
        },
        server: args.server,
        token: args.token,
        token_file: args.token_file,
        cluster_init: args.cluster_init,
        node_name: args.node_name,
        runtime: match args.runtime {
            RuntimeArg::External => Runtime::External,
            RuntimeArg::Embedded => Runtime::Embedded,
        },
        containerd_socket: args.containerd_socket,
        snapshotter: args.snapshotter,
        root: args.root,
        init: args.init.map(|i| match i {
            InitArg::Systemd => Init::Systemd,
            InitArg::Openrc => Init::Openrc,
            InitArg::None => Init::None,
        }),
        skip_preflight: args.skip_preflight,
        no_start: args.no_start,
        dry_run: args.dry_run,
        wait: std::time::Duration::from_secs(args.wait),
        extra_args: args.k3s_args,
    };
    let report = airgap_installer::install::install(&opts, &airgap_installer::run::HostRunner)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if !report.plan.is_empty() {
        println!("dry run: nothing was changed. The plan:");
        for step in &report.plan {
            println!("  {step}");
        }
        println!("\npreflight:\n{}", report.preflight);
        return Ok(());
    }
    eprintln!("{}", report.preflight);
    if let Some(images) = &report.images {
        eprintln!(
            "images: {} in containerd ({} blobs written, {} already present)",
            images.images.len(),
            images.blobs_written,
            images.blobs_present
        );
    }
    if let Some(e) = &report.embedded_images {
        eprintln!("images: {e}");
    }
    for f in &report.files_written {
        eprintln!("wrote {f}");
    }
    if report.changed {
        eprintln!(
            "installed k3s {} as {}: {}",
            report.k3s_version,
            report.role.as_str(),
            report.service
        );
    } else {
        eprintln!(
            "nothing to do: k3s {} from this bundle is already installed as {} ({} files unchanged); {}",
            report.k3s_version,
            report.role.as_str(),
            report.files_unchanged.len(),
            report.service
        );
    }
    if let Some(cmd) = &report.join_command {
        eprintln!("\nto join agents, carry the token file and run on each:\n  {cmd}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
