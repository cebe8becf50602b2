//! After registering, the installer tries what a job's checkout does, as
//! the service user in its work directory: git makes a repository, commits
//! and clones it, and a shell runs a command. A worker that says "online"
//! can then run a job; when it cannot, the installer says what failed and
//! how to fix it.

use super::system::Account;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// What the trial runs: a checkout's moves with nothing fetched from afar.
const TRIAL: &str = r#"set -e
rm -rf .herd-trial
mkdir .herd-trial
cd .herd-trial
git init -q origin
git -C origin -c user.name=herd -c user.email=herd@localhost commit -q --allow-empty -m trial
git init -q checkout
cd checkout
git fetch -q ../origin HEAD
git checkout -q --detach FETCH_HEAD
echo ok > /dev/null
cd ../..
rm -rf .herd-trial
"#;

/// Runs the trial as `account` (when this process may switch to it) in
/// `workdir`. Err: what failed, with the fix.
pub fn try_a_checkout(account: &Account, workdir: &Path, switch: bool) -> Result<(), String> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(TRIAL)
        .current_dir(workdir)
        .env("HOME", &account.home)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    if switch {
        // std drops root's supplementary groups when it sets the uid.
        cmd.uid(account.uid).gid(account.gid);
    }
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run sh as {} in {}: {e}\n  fix: {}",
            account.name,
            workdir.display(),
            fix_for(&e.to_string(), &account.name, workdir)
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.trim();
    Err(format!(
        "as {} in {}, a checkout fails: {}\n  fix: {}",
        account.name,
        workdir.display(),
        if said.is_empty() { "(no output)" } else { said },
        fix_for(said, &account.name, workdir)
    ))
}

/// The fix for what the trial printed.
pub fn fix_for(said: &str, user: &str, workdir: &Path) -> String {
    if said.contains("/dev/null") {
        "/dev/null is not usable here (a container without it?): recreate it as root with `rm -f /dev/null; mknod -m 666 /dev/null c 1 3`".into()
    } else if said.contains("dubious ownership") {
        format!(
            "the work directory belongs to another user: `chown -R {user} {}`",
            workdir.display()
        )
    } else if said.contains("Permission denied") || said.contains("cannot mkdir") {
        format!(
            "{user} cannot enter or write in {}: let it reach the directory and own it (`chmod o+x` on its parents, `chown -R {user} {}`), or install with --workdir DIR on a directory it owns",
            workdir.display(),
            workdir.display()
        )
    } else if said.contains("not found") || said.contains("No such file") {
        "git or sh is missing from the service's PATH: install git (`apt-get install git`) where every user finds it (/usr/bin)".into()
    } else {
        "run the installer again after fixing what git says above".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_known_failure_gets_its_fix() {
        let w = Path::new("/var/lib/herd/work");
        assert!(
            fix_for("fatal: could not open '/dev/null' for reading", "herd", w).contains("mknod")
        );
        assert!(
            fix_for("fatal: detected dubious ownership in repository", "herd", w)
                .contains("chown -R herd /var/lib/herd/work")
        );
        assert!(fix_for(
            "mkdir: cannot create directory '.herd-trial': Permission denied",
            "herd",
            w
        )
        .contains("--workdir"));
        assert!(fix_for("sh: 1: git: not found", "herd", w).contains("apt-get install git"));
    }

    #[test]
    fn the_trial_passes_for_this_user_in_a_directory_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap();
        let account = Account {
            name: me.name,
            uid: me.uid.as_raw(),
            gid: me.gid.as_raw(),
            home: dir.path().to_path_buf(),
        };
        try_a_checkout(&account, dir.path(), false).unwrap();
        assert!(!dir.path().join(".herd-trial").exists(), "it cleans up");
        let missing = try_a_checkout(&account, &dir.path().join("nope"), false).unwrap_err();
        assert!(missing.contains("cannot run sh"), "{missing}");
    }
}
