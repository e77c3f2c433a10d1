#!/usr/bin/env bash
# CI test of the SELinux policy module and the authselect profile (issue 18), on Debian.
# No enforcing SELinux here: what can be checked is the policy itself and the profile's text.
#
#   - packaging/selinux/build.sh builds pam_truid.pp with the devel Makefile of
#     selinux-policy-dev (refpolicy), warnings counted as errors;
#   - the module is linked (semodule_link) with the base policy and every module of Debian's
#     selinux-policy-default (fetched once with apt-get download, never installed), expanded
#     (semodule_expand) to a kernel policy, and the same is done without pam_truid: every
#     rule sesearch lists (allow, dontaudit, auditallow, type_transition) in the one and not in
#     the other must be in EXPECTED below, and every line of EXPECTED must be there. A rule
#     missing or extra fails;
#   - seinfo: the types' attributes, the login domains in pam_truid_login_domain, the
#     lockers' own domains in pam_truid_locker_domain, the booleans pam_truid_connect_http and
#     pam_truid_enroll_at_login off by default, system_r allowed the agent's domain;
#   - the file contexts packed in the .pp;
#   - pam_truid.if: a local module calling each interface builds and links;
#   - the authselect profile (packaging/authselect): every {...} directive parses as
#     authselect's template code reads it, each rendering (with and without with-truid and
#     the other features) has only valid PAM lines and jumps inside their section, pam_truid
#     only under with-truid; then real libpam (pamtester under pam_wrapper) runs the rendered
#     auth stacks with pam_debug standing for the password and the code, and a pam_exec
#     marker proving the code is never asked after a wrong password.
#
# Needs (tests/setup.sh installs them): selinux-policy-dev checkpolicy semodule-utils setools
# pamtester libpam-wrapper python3. About 90 s the first time, 60 s after (the base policy's
# rules are cached in /var/cache/pam_truid-tests).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
started=$(date +%s)

fail() { echo "selinux: FAIL: $*" >&2; exit 1; }
note() { echo "selinux: $*"; }
secs() { echo $(( $(date +%s) - $1 )); }

for tool in make checkmodule semodule_link semodule_expand semodule_unpackage sesearch seinfo \
    pamtester python3 apt-get; do
    command -v "$tool" >/dev/null || fail "$tool is missing: run tests/setup.sh"
done
[ -f /usr/share/selinux/devel/Makefile ] || fail "no /usr/share/selinux/devel/Makefile: run tests/setup.sh"

work=$(mktemp -d /tmp/pam_truid-selinux.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --------------------------------------------------------------------------------------
# Build

t=$(date +%s)
packaging/selinux/build.sh "$work/out" > "$work/build.log" 2>&1 || fail "policy build: $(cat "$work/build.log")"
pp=$work/out/pam_truid.pp
[ -s "$pp" ] || fail "no pam_truid.pp"
packaging/selinux/build.sh "$work/out2" > /dev/null 2>&1
cmp -s "$pp" "$work/out2/pam_truid.pp" || fail "two builds of pam_truid.pp differ"
note "ok: pam_truid.pp built with the devel Makefile, no warning, reproducible ($(secs "$t") s)"

# --------------------------------------------------------------------------------------
# Debian's refpolicy, as modules: the base the module links against. Downloaded, not
# installed (its postinst would build a policy store on this host).

t=$(date +%s)
version=$(apt-cache show --no-all-versions selinux-policy-default 2>/dev/null | awk '/^Version:/ && !v { v = $2 } END { print v }')
[ -n "$version" ] || fail "apt knows no selinux-policy-default (apt-get update?)"
cache=/var/cache/pam_truid-tests/selinux-policy-default/${version//:/_}
if [ ! -f "$cache/.complete" ]; then
    rm -rf "$cache"
    mkdir -p "$cache/deb" "$cache/pp"
    (cd "$cache/deb" && apt-get download -q "selinux-policy-default=$version" > /dev/null 2>&1) ||
        fail "apt-get download selinux-policy-default=$version"
    dpkg-deb -x "$cache"/deb/*.deb "$cache/root"
    for f in "$cache"/root/usr/share/selinux/default/*.pp.bz2; do
        bzcat "$f" > "$cache/pp/$(basename "$f" .bz2)"
    done
    rm -rf "$cache/root" "$cache/deb"
    touch "$cache/.complete"
fi
[ -f "$cache/pp/base.pp" ] || fail "no base.pp in $cache"
others=()
for m in "$cache"/pp/*.pp; do
    [ "$(basename "$m")" = base.pp ] || others+=("$m")
done
note "ok: refpolicy $version: base and ${#others[@]} modules ($(secs "$t") s)"

# --------------------------------------------------------------------------------------
# Linked with and without pam_truid: the rules it adds

t=$(date +%s)
link() { # OUT MODULE...: a kernel policy of base + the modules
    local out=$1
    shift
    semodule_link -o "$out.lnk" "$cache/pp/base.pp" "$@" > "$out.link.log" 2>&1 ||
        fail "semodule_link $out: $(grep -v 'optional requirements' "$out.link.log" | tail -5)"
    semodule_expand "$out.lnk" "$out.bin" > "$out.expand.log" 2>&1 ||
        fail "semodule_expand $out: $(tail -5 "$out.expand.log")"
    rm -f "$out.lnk"
}
rules() { sesearch -A -T --dontaudit --auditallow "$1" | LC_ALL=C sort; }
# The policy without pam_truid depends on the refpolicy version alone: kept in the cache.
if [ ! -s "$cache/without.rules" ] || [ ! -s "$cache/without.bin" ]; then
    link "$work/without" "${others[@]}"
    rules "$work/without.bin" > "$cache/without.rules.tmp"
    mv "$work/without.bin" "$cache/without.bin"
    mv "$cache/without.rules.tmp" "$cache/without.rules"
fi
cp "$cache/without.rules" "$work/without.rules"
ln -s "$cache/without.bin" "$work/without.bin"
link "$work/with" "${others[@]}" "$pp"
rules "$work/with.bin" > "$work/with.rules"
LC_ALL=C comm -13 "$work/without.rules" "$work/with.rules" > "$work/added"
LC_ALL=C comm -23 "$work/without.rules" "$work/with.rules" > "$work/removed"
note "linked and expanded with and without pam_truid ($(secs "$t") s): $(wc -l < "$work/with.rules") rules with, $(wc -l < "$work/without.rules") without"
[ ! -s "$work/removed" ] || fail "rules of the base policy changed: $(cat "$work/removed")"

# Every rule pam_truid adds to Debian 12's refpolicy. Most are pam_truid.te's own lines; the
# others come from the base policy's rules on attributes the new types join (domain:
# ifplugd_t reading a domain's /proc, "self" rules of every domain; nsswitch_domain: the
# agent's "self" rules for NSS, some under refpolicy's booleans; file_type: filesystem
# associate), and the login domains' self rules under the boolean merge into the rules those
# domains already have on themselves; a type_transition on the login domains' attribute is
# listed per domain. syslogd_var_run_t and init_var_run_t are refpolicy's aliases of
# syslogd_runtime_t and init_runtime_t. sshd_session_t (RHEL 10) is not in this policy, so
# its optional block is not linked here.
cat > "$work/expected" <<'EOF'
allow ifplugd_t pam_truid_agent_t:dir { getattr ioctl lock open read search };
allow ifplugd_t pam_truid_agent_t:file { getattr ioctl lock open read };
allow ifplugd_t pam_truid_agent_t:lnk_file { getattr read };
allow init_t pam_truid_agent_t:process { rlimitinh sigkill signal signull transition };
allow init_t pam_truid_agent_t:process2 { nnp_transition nosuid_transition };
allow init_t pam_truid_exec_t:file { execute getattr map open read };
allow local_login_t local_login_t:tcp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write }; [ pam_truid_connect_http ]:True
allow local_login_t local_login_t:udp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write }; [ pam_truid_connect_http ]:True
allow pam_truid_agent_t cert_t:dir { getattr open read search };
allow pam_truid_agent_t cert_t:file { getattr ioctl lock open read };
allow pam_truid_agent_t cert_t:lnk_file { getattr read };
allow pam_truid_agent_t device_t:dir { getattr search };
allow pam_truid_agent_t devlog_t:lnk_file { getattr read };
allow pam_truid_agent_t devlog_t:sock_file { getattr write };
allow pam_truid_agent_t dns_port_t:tcp_socket name_connect;
allow pam_truid_agent_t etc_t:dir { add_name getattr open read remove_name search write };
allow pam_truid_agent_t etc_t:file { getattr ioctl lock open read };
allow pam_truid_agent_t etc_t:lnk_file { getattr read };
allow pam_truid_agent_t http_cache_port_t:tcp_socket name_connect;
allow pam_truid_agent_t http_port_t:tcp_socket name_connect;
allow pam_truid_agent_t init_runtime_t:dir { getattr search };
allow pam_truid_agent_t init_t:fd use;
allow pam_truid_agent_t init_t:process sigchld;
allow pam_truid_agent_t init_t:unix_stream_socket { append getattr ioctl read write };
allow pam_truid_agent_t kernel_t:unix_dgram_socket sendto;
allow pam_truid_agent_t net_conf_t:dir { getattr open read search };
allow pam_truid_agent_t net_conf_t:file { getattr ioctl lock open read };
allow pam_truid_agent_t net_conf_t:lnk_file { getattr read };
allow pam_truid_agent_t pam_truid_agent_t:association sendto;
allow pam_truid_agent_t pam_truid_agent_t:capability net_bind_service; [ allow_ypbind ]:True
allow pam_truid_agent_t pam_truid_agent_t:dir { getattr ioctl lock open read search };
allow pam_truid_agent_t pam_truid_agent_t:fifo_file { append getattr ioctl lock open read write };
allow pam_truid_agent_t pam_truid_agent_t:file { append getattr ioctl lock open read write };
allow pam_truid_agent_t pam_truid_agent_t:key { create link read search setattr view write };
allow pam_truid_agent_t pam_truid_agent_t:lnk_file { getattr ioctl lock read };
allow pam_truid_agent_t pam_truid_agent_t:lockdown { confidentiality integrity };
allow pam_truid_agent_t pam_truid_agent_t:netlink_route_socket { append bind connect create getattr getopt ioctl nlmsg_read read setattr setopt shutdown write };
allow pam_truid_agent_t pam_truid_agent_t:process { fork getsched sigchld signal };
allow pam_truid_agent_t pam_truid_agent_t:tcp_socket { accept append bind connect create getattr getopt ioctl listen read setattr setopt shutdown write }; [ allow_ypbind ]:True
allow pam_truid_agent_t pam_truid_agent_t:tcp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write };
allow pam_truid_agent_t pam_truid_agent_t:tcp_socket { append bind connect create getattr getopt ioctl read setattr setopt shutdown write }; [ allow_kerberos ]:True
allow pam_truid_agent_t pam_truid_agent_t:tcp_socket { append bind connect create getattr getopt ioctl read setattr setopt shutdown write }; [ authlogin_nsswitch_use_ldap ]:True
allow pam_truid_agent_t pam_truid_agent_t:udp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write };
allow pam_truid_agent_t pam_truid_agent_t:udp_socket { append bind connect create getattr getopt ioctl read setattr setopt shutdown write }; [ allow_kerberos ]:True
allow pam_truid_agent_t pam_truid_agent_t:udp_socket { append bind connect create getattr getopt ioctl read setattr setopt shutdown write }; [ allow_ypbind ]:True
allow pam_truid_agent_t pam_truid_agent_t:unix_dgram_socket { append connect create getattr getopt ioctl read setopt shutdown write };
allow pam_truid_agent_t pam_truid_agent_t:unix_stream_socket { accept append bind connect connectto create getattr getopt ioctl listen lock read setattr setopt shutdown write };
allow pam_truid_agent_t pam_truid_agent_t:unix_stream_socket { accept append bind connect create getattr getopt ioctl listen read setattr setopt shutdown write }; [ nscd_use_shm ]:True
allow pam_truid_agent_t pam_truid_agent_t:unix_stream_socket { append bind connect create getattr getopt ioctl read setattr setopt shutdown write }; [ nscd_use_shm ]:False
allow pam_truid_agent_t pam_truid_conf_t:file { append create getattr ioctl lock open read rename setattr unlink write };
allow pam_truid_agent_t pam_truid_exec_t:file { entrypoint execute getattr ioctl lock map open read };
allow pam_truid_agent_t pam_truid_public_var_run_t:dir { add_name getattr open read remove_name search write };
allow pam_truid_agent_t pam_truid_public_var_run_t:sock_file { create getattr unlink write };
allow pam_truid_agent_t pam_truid_var_lib_t:dir { add_name getattr open read remove_name search write };
allow pam_truid_agent_t pam_truid_var_lib_t:file { append create getattr ioctl lock open read rename setattr unlink write };
allow pam_truid_agent_t pam_truid_var_run_t:dir { add_name getattr open read remove_name search write };
allow pam_truid_agent_t pam_truid_var_run_t:file { append create getattr ioctl lock open read rename setattr unlink write };
allow pam_truid_agent_t pam_truid_var_run_t:sock_file { create getattr unlink write };
allow pam_truid_agent_t syslogd_runtime_t:dir { getattr search };
allow pam_truid_agent_t syslogd_t:unix_dgram_socket sendto;
allow pam_truid_agent_t var_lib_t:dir { getattr search };
allow pam_truid_agent_t var_run_t:dir { getattr search };
allow pam_truid_conf_t pam_truid_conf_t:filesystem associate;
allow pam_truid_exec_t pam_truid_exec_t:filesystem associate;
allow pam_truid_locker_domain pam_truid_agent_t:unix_stream_socket connectto;
allow pam_truid_locker_domain pam_truid_public_var_run_t:dir { getattr search };
allow pam_truid_locker_domain pam_truid_public_var_run_t:sock_file { getattr write };
allow pam_truid_locker_domain var_run_t:dir { getattr search };
allow pam_truid_login_domain cert_t:dir { getattr open read search };
allow pam_truid_login_domain cert_t:file { getattr ioctl lock open read };
allow pam_truid_login_domain cert_t:lnk_file { getattr read };
allow pam_truid_login_domain dns_port_t:tcp_socket name_connect; [ pam_truid_connect_http ]:True
allow pam_truid_login_domain etc_t:dir { add_name open read remove_name write }; [ pam_truid_enroll_at_login ]:True
allow pam_truid_login_domain etc_t:dir { getattr search };
allow pam_truid_login_domain etc_t:file { getattr ioctl lock open read };
allow pam_truid_login_domain http_cache_port_t:tcp_socket name_connect; [ pam_truid_connect_http ]:True
allow pam_truid_login_domain http_port_t:tcp_socket name_connect; [ pam_truid_connect_http ]:True
allow pam_truid_login_domain net_conf_t:dir { getattr open read search }; [ pam_truid_connect_http ]:True
allow pam_truid_login_domain net_conf_t:file { getattr ioctl lock open read }; [ pam_truid_connect_http ]:True
allow pam_truid_login_domain net_conf_t:lnk_file { getattr read }; [ pam_truid_connect_http ]:True
allow pam_truid_login_domain pam_truid_agent_t:unix_stream_socket connectto;
allow pam_truid_login_domain pam_truid_conf_t:file { append create rename setattr unlink write }; [ pam_truid_enroll_at_login ]:True
allow pam_truid_login_domain pam_truid_conf_t:file { getattr ioctl lock open read };
allow pam_truid_login_domain pam_truid_var_lib_t:dir { add_name getattr open read remove_name search write };
allow pam_truid_login_domain pam_truid_var_lib_t:file { append create getattr ioctl lock open read rename setattr unlink write };
allow pam_truid_login_domain pam_truid_var_run_t:dir { add_name getattr open read remove_name search write };
allow pam_truid_login_domain pam_truid_var_run_t:file { append create getattr ioctl lock open read rename setattr unlink write };
allow pam_truid_login_domain pam_truid_var_run_t:sock_file { getattr write };
allow pam_truid_login_domain var_lib_t:dir { getattr search };
allow pam_truid_login_domain var_run_t:dir { getattr search };
allow pam_truid_public_var_run_t pam_truid_public_var_run_t:filesystem associate;
allow pam_truid_var_lib_t pam_truid_var_lib_t:filesystem associate;
allow pam_truid_var_run_t pam_truid_var_run_t:filesystem associate;
allow policykit_auth_t policykit_auth_t:tcp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write }; [ pam_truid_connect_http ]:True
allow policykit_auth_t policykit_auth_t:udp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write }; [ pam_truid_connect_http ]:True
allow sshd_t sshd_t:tcp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write }; [ pam_truid_connect_http ]:True
allow sshd_t sshd_t:udp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write }; [ pam_truid_connect_http ]:True
allow userdomain pam_truid_agent_t:unix_stream_socket connectto;
allow userdomain pam_truid_public_var_run_t:dir { getattr search };
allow userdomain pam_truid_public_var_run_t:sock_file { getattr write };
allow userdomain var_run_t:dir { getattr search };
allow xdm_t xdm_t:tcp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write }; [ pam_truid_connect_http ]:True
allow xdm_t xdm_t:udp_socket { append bind connect create getattr getopt ioctl lock read setattr setopt shutdown write }; [ pam_truid_connect_http ]:True
dontaudit pam_truid_agent_t pam_truid_agent_t:process setfscreate;
dontaudit pam_truid_agent_t pam_truid_agent_t:udp_socket listen;
type_transition init_t pam_truid_exec_t:process pam_truid_agent_t;
type_transition local_login_t etc_t:file pam_truid_conf_t; [ pam_truid_enroll_at_login ]:True
type_transition pam_truid_agent_t etc_t:file pam_truid_conf_t;
type_transition policykit_auth_t etc_t:file pam_truid_conf_t; [ pam_truid_enroll_at_login ]:True
type_transition sshd_t etc_t:file pam_truid_conf_t; [ pam_truid_enroll_at_login ]:True
type_transition unconfined_t etc_t:file pam_truid_conf_t .pam_truid.toml.lock;
type_transition xdm_t etc_t:file pam_truid_conf_t; [ pam_truid_enroll_at_login ]:True
EOF
LC_ALL=C sort -o "$work/expected" "$work/expected"
if ! diff -u "$work/expected" "$work/added" > "$work/rules.diff"; then
    echo "selinux: the rules pam_truid adds differ from the expected list (-: expected, missing; +: extra):" >&2
    grep '^[-+][^-+]' "$work/rules.diff" >&2
    fail "policy rules"
fi
note "ok: pam_truid adds exactly the $(wc -l < "$work/expected") expected rules, no other, and changes none of the base policy's"

# What sesearch answers for the questions the issue asks, through the attribute as the
# kernel sees it (printed, and each must find a rule).
ask() { # WHAT SESEARCH-ARGS...: the rule of pam_truid's that answers (other rules may too)
    local what=$1
    shift
    sesearch "$@" "$work/with.bin" | grep -m1 'pam_truid' > "$work/ask.out" || true
    [ -s "$work/ask.out" ] || fail "sesearch $*: no rule of pam_truid's: $what"
    echo "    $what: $(cat "$work/ask.out")"
}
note "sesearch on the linked policy:"
for d in sshd_t local_login_t xdm_t policykit_auth_t; do
    ask "$d connects to the agent" -A -s "$d" -t pam_truid_agent_t -c unix_stream_socket -p connectto
    ask "$d writes its socket" -A -s "$d" -t pam_truid_var_run_t -c sock_file -p write
    ask "$d rewrites the caches" -A -s "$d" -t pam_truid_var_run_t -c file -p create,rename,write
    ask "$d reads the config" -A -s "$d" -t pam_truid_conf_t -c file -p read,open
    ask "$d rewrites the recovery codes" -A -s "$d" -t pam_truid_var_lib_t -c file -p create,rename,write,lock
    ask "$d reaches HTTPS with the boolean" -A -s "$d" -t http_port_t -c tcp_socket -p name_connect -b pam_truid_connect_http
    ask "$d rewrites the config with the boolean" -A -s "$d" -t pam_truid_conf_t -c file -p create,rename,write,setattr -b pam_truid_enroll_at_login
    ask "$d makes its files in /etc/security the config's type, with the boolean" -T -s "$d" -t etc_t -c file -D pam_truid_conf_t -b pam_truid_enroll_at_login
done
# Lockers run in the user's domain (xscreensaver in its own): the public socket only.
for d in user_t staff_t unconfined_t xscreensaver_t vlock_t; do
    ask "$d connects to the agent" -A -s "$d" -t pam_truid_agent_t -c unix_stream_socket -p connectto
    ask "$d writes its public socket" -A -s "$d" -t pam_truid_public_var_run_t -c sock_file -p write
    ask "$d searches its folder" -A -s "$d" -t pam_truid_public_var_run_t -c dir -p search
done
# ...and nothing else of pam_truid's: not the root socket, the caches, the config, the codes.
for t in pam_truid_var_run_t pam_truid_conf_t pam_truid_var_lib_t; do
    sesearch -A -s user_t -t "$t" "$work/with.bin" > "$work/user.$t"
    ! grep pam_truid "$work/user.$t" > /dev/null || fail "user_t may use $t: $(cat "$work/user.$t")"
done
ask "the agent makes and removes the public socket" -A -s pam_truid_agent_t -t pam_truid_public_var_run_t -c sock_file -p create,unlink
ask "the agent rewrites the config (self-service)" -A -s pam_truid_agent_t -t pam_truid_conf_t -c file -p create,write,rename,unlink,setattr,lock
ask "the agent makes its files in /etc/security the config's type" -T -s pam_truid_agent_t -t etc_t -c file -D pam_truid_conf_t
ask "the agent strikes used recovery codes" -A -s pam_truid_agent_t -t pam_truid_var_lib_t -c file -p create,rename,write,lock
ask "the agent logs to syslog" -A -s pam_truid_agent_t -t syslogd_t -c unix_dgram_socket -p sendto
ask "systemd enters the agent's domain" -T -s init_t -t pam_truid_exec_t -c process
ask "the agent reaches tru.ID" -A -s pam_truid_agent_t -t http_port_t -c tcp_socket -p name_connect
# The agent connects to no port but HTTP, an HTTP proxy and DNS, whatever rule grants it,
# except what NSS needs once the host's NSS booleans turn it on (as an nsswitch_domain, it
# resolves each caller's account: Kerberos, LDAP, NIS), and only through those booleans.
sesearch -A -s pam_truid_agent_t -c tcp_socket -p name_connect "$work/with.bin" > "$work/agent.ports"
ports=$(grep -v '\]:True' "$work/agent.ports" | awk '{ print $3 }' | sort -u | tr '\n' ' ')
[ "$ports" = "dns_port_t:tcp_socket http_cache_port_t:tcp_socket http_port_t:tcp_socket " ] ||
    fail "the agent may connect to: $ports"
nss=$(grep '\]:True' "$work/agent.ports" | grep -vE '^allow nsswitch_domain [a-z_]+:tcp_socket [^;]+; \[ (allow_kerberos|authlogin_nsswitch_use_ldap|allow_ypbind) \]:True$' || true)
[ -z "$nss" ] || fail "the agent may connect under other booleans: $nss"
# Without the boolean the login domains that refpolicy does not already let connect anywhere
# (sshd_t and xdm_t may, for port forwarding and XDMCP) get no HTTP: every rule is the boolean's.
for d in local_login_t policykit_auth_t; do
    sesearch -A -s "$d" -t http_port_t -c tcp_socket -p name_connect "$work/with.bin" > "$work/http.$d"
    if grep -v 'pam_truid_connect_http' "$work/http.$d" | grep . > /dev/null; then
        fail "$d may connect to http_port_t without the boolean"
    fi
done
note "ok: each intended rule found by sesearch; the agent's ports: $ports(and NSS's under the host's NSS booleans)"

# seinfo: types and their attributes, the login domains, the boolean, the role.
# "type T, a, b;" with its attributes sorted (seinfo prints them in no fixed order).
seinfo_line() {
    seinfo -x "$@" "$work/with.bin" | sed -n 's/^ *//; /^\(type\|bool\) /p' |
        awk '/^type / { sub(/;$/, ""); n = split($0, a, ", "); out = a[1]; delete a[1]
                        m = asort(a); for (i = 1; i <= m; i++) out = out ", " a[i]; print out ";"; next } { print }'
}
expect_seinfo() { # EXPECTED SEINFO-ARGS...
    local want=$1
    shift
    local got
    got=$(seinfo_line "$@")
    [ "$got" = "$want" ] || fail "seinfo $*: \"$got\", expected \"$want\""
}
expect_seinfo "type pam_truid_agent_t, daemon, domain, nsswitch_domain;" -t pam_truid_agent_t
expect_seinfo "type pam_truid_exec_t, entry_type, exec_type, file_type, non_auth_file_type, non_security_file_type;" -t pam_truid_exec_t
expect_seinfo "type pam_truid_var_run_t, file_type, non_auth_file_type, non_security_file_type, pidfile;" -t pam_truid_var_run_t
expect_seinfo "type pam_truid_public_var_run_t, file_type, non_auth_file_type, non_security_file_type, pidfile;" -t pam_truid_public_var_run_t
expect_seinfo "type pam_truid_conf_t, configfile, file_type, non_auth_file_type, non_security_file_type;" -t pam_truid_conf_t
expect_seinfo "type pam_truid_var_lib_t, file_type, non_auth_file_type, non_security_file_type;" -t pam_truid_var_lib_t
expect_seinfo "bool pam_truid_connect_http false;" -b pam_truid_connect_http
expect_seinfo "bool pam_truid_enroll_at_login false;" -b pam_truid_enroll_at_login
members=$(seinfo -x -a pam_truid_login_domain "$work/with.bin" | sed -n '/attribute pam_truid_login_domain/,$p' | tail -n +2 | tr -s ' \t\n' ' ' | sed 's/^ //; s/ $//')
[ "$members" = "local_login_t policykit_auth_t sshd_t xdm_t" ] || fail "pam_truid_login_domain: $members"
user_clients=$(seinfo -x -a pam_truid_locker_domain "$work/with.bin" | sed -n '/attribute pam_truid_locker_domain/,$p' | tail -n +2 | tr -s ' \t\n' ' ' | sed 's/^ //; s/ $//')
[ "$user_clients" = "vlock_t xscreensaver_t" ] || fail "pam_truid_locker_domain: $user_clients"
# (Into files, not "| grep -q": grep leaving early would fail the pipeline under pipefail.)
seinfo -x -r system_r "$work/with.bin" > "$work/system_r"
grep -w pam_truid_agent_t "$work/system_r" > /dev/null || fail "system_r may not hold pam_truid_agent_t"
new_types=$(LC_ALL=C comm -13 <(seinfo "$work/without.bin" -t | sed 's/^ *//' | LC_ALL=C sort) <(seinfo "$work/with.bin" -t | sed 's/^ *//' | LC_ALL=C sort) | grep -v '^Types:' | tr '\n' ' ')
[ "$new_types" = "pam_truid_agent_t pam_truid_conf_t pam_truid_exec_t pam_truid_public_var_run_t pam_truid_var_lib_t pam_truid_var_run_t " ] ||
    fail "new types: $new_types"
note "ok: seinfo: types ($new_types), attributes, login domains ($members), lockers' own domains ($user_clients), booleans off by default, role system_r"

# The file contexts packed in the .pp.
semodule_unpackage "$pp" "$work/unpacked.mod" "$work/unpacked.fc"
grep -v '^[[:space:]]*\(#\|$\)' "$work/unpacked.fc" | tr -s ' \t' ' ' > "$work/fc"
cat > "$work/fc.expected" <<'EOF'
/usr/bin/truid-pam -- system_u:object_r:pam_truid_exec_t:s0
/etc/security/pam_truid\.toml -- system_u:object_r:pam_truid_conf_t:s0
/etc/security/\.pam_truid\.toml\.lock -- system_u:object_r:pam_truid_conf_t:s0
/run/pam_truid(/.*)? system_u:object_r:pam_truid_var_run_t:s0
/var/run/pam_truid(/.*)? system_u:object_r:pam_truid_var_run_t:s0
/run/pam_truid-public(/.*)? system_u:object_r:pam_truid_public_var_run_t:s0
/var/run/pam_truid-public(/.*)? system_u:object_r:pam_truid_public_var_run_t:s0
/var/lib/pam_truid(/.*)? system_u:object_r:pam_truid_var_lib_t:s0
EOF
diff -u "$work/fc.expected" "$work/fc" >&2 || fail "file contexts in pam_truid.pp"
note "ok: file contexts: /usr/bin/truid-pam, /etc/security/pam_truid.toml and its lock, /run/pam_truid, /run/pam_truid-public, /var/lib/pam_truid"

# pam_truid.if: a local module using every interface, as an administrator would write one
# (e.g. for a confined user's sudo domain), builds against the shipped .if and links. (The
# devel Makefile reads the .if of each .te beside it; on RHEL the .rpm puts the .if among
# the headers, /usr/share/selinux/devel/include/contrib.)
t=$(date +%s)
mkdir "$work/local"
cp packaging/selinux/pam_truid.if packaging/selinux/pam_truid.te packaging/selinux/pam_truid.fc "$work/local/"
cat > "$work/local/pam_truid_local.te" <<'EOF'
policy_module(pam_truid_local, 1.0.0)
gen_require(`
	type staff_sudo_t, sysadm_t, user_t, staff_screen_t;
')
pam_truid_client(staff_sudo_t)
pam_truid_user_client(staff_screen_t)
pam_truid_admin(sysadm_t)
pam_truid_stream_connect(user_t)
pam_truid_read_config(user_t)
EOF
: > "$work/local/pam_truid_local.fc"
(cd "$work/local" && make -s -f /usr/share/selinux/devel/Makefile pam_truid_local.pp) > "$work/local.log" 2>&1 ||
    fail "a module using pam_truid.if: $(cat "$work/local.log")"
! grep -qi warning "$work/local.log" || fail "a module using pam_truid.if: $(cat "$work/local.log")"
link "$work/local" "${others[@]}" "$pp" "$work/local/pam_truid_local.pp"
seinfo -x -a pam_truid_login_domain "$work/local.bin" > "$work/local.members"
grep -w staff_sudo_t "$work/local.members" > /dev/null ||
    fail "pam_truid_client(staff_sudo_t) did not add it to the login domains: $(cat "$work/local.members")"
sesearch -A -s sysadm_t -t pam_truid_conf_t -c file -p write -ds -dt "$work/local.bin" > "$work/local.admin"
[ -s "$work/local.admin" ] || fail "pam_truid_admin(sysadm_t): no write on the config"
sesearch -A -s user_t -t pam_truid_agent_t -c unix_stream_socket -p connectto -ds -dt "$work/local.bin" > "$work/local.connect"
[ -s "$work/local.connect" ] || fail "pam_truid_stream_connect(user_t)"
sesearch -A -s user_t -t pam_truid_conf_t -c file -p read -ds -dt "$work/local.bin" > "$work/local.read"
[ -s "$work/local.read" ] || fail "pam_truid_read_config(user_t)"
seinfo -x -a pam_truid_locker_domain "$work/local.bin" > "$work/local.user_clients"
grep -w staff_screen_t "$work/local.user_clients" > /dev/null ||
    fail "pam_truid_user_client(staff_screen_t) did not add it to the lockers' domains: $(cat "$work/local.user_clients")"
sesearch -A -s sysadm_t -t pam_truid_public_var_run_t -c sock_file -p write -ds -dt "$work/local.bin" > "$work/local.admin_public"
[ -s "$work/local.admin_public" ] || fail "pam_truid_admin(sysadm_t): no write on the public socket"
note "ok: pam_truid.if: pam_truid_client, pam_truid_user_client, pam_truid_admin, pam_truid_stream_connect, pam_truid_read_config build and link ($(secs "$t") s)"

# --------------------------------------------------------------------------------------
# The authselect profile

t=$(date +%s)
mkdir "$work/authselect"
python3 - "$repo/packaging/authselect" "$work/authselect" <<'EOF'
"""Renders the authselect profile as authselect's template code does (src/lib/util/
template.c: the same operator expressions; expressions with and, or, not, parentheses) and
checks every rendering. Writes each rendered auth stack to OUT/<features>/<file>."""
import itertools, os, re, sys

src, out = sys.argv[1], sys.argv[2]
FEATURES = ["with-truid", "with-faillock", "with-mkhomedir", "without-nullok"]
PAM_FILES = ["system-auth", "password-auth", "fingerprint-auth", "smartcard-auth", "postlogin"]
OTHER_FILES = ["nsswitch.conf", "dconf-db", "dconf-locks", "README", "REQUIREMENTS"]
VALUE, FEATURE, EXPR = r'([^{}|]*)', r'"([^{}"|]+)"', r'([^{}|:]+)'
OP = re.compile(r'\{((continue if|stop if|include if|exclude if) ' + EXPR +
                r'|(if) ' + EXPR + ':' + VALUE + r'(\|' + VALUE + r')?' +
                r'|(imply) ' + FEATURE + ' if ' + EXPR + r')\}')
errors = []

def fail(msg):
    errors.append(msg)

def evaluate(expr, features):
    tokens = re.findall(r'"[^"]+"|\(|\)|\band\b|\bor\b|\bnot\b|\S+', expr)
    pos = 0
    def peek():
        return tokens[pos] if pos < len(tokens) else None
    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]
    def unary():
        t = take() if peek() else None
        if t == 'not':
            return not unary()
        if t == '(':
            v = disj()
            if take() != ')':
                raise ValueError('no ) in ' + expr)
            return v
        if t and t.startswith('"') and t.endswith('"'):
            if t[1:-1] not in FEATURES:
                raise ValueError('unknown feature ' + t)
            return t[1:-1] in features
        raise ValueError('unexpected %r in %r' % (t, expr))
    def conj():
        v = unary()
        while peek() == 'and':
            take()
            v = unary() and v
        return v
    def disj():
        v = conj()
        while peek() == 'or':
            take()
            v = conj() or v
        return v
    v = disj()
    if pos != len(tokens):
        raise ValueError('trailing %r in %r' % (tokens[pos:], expr))
    return v

def render(text, features):
    features = set(features)
    lines, kept = text.split('\n'), []
    for i, line in enumerate(lines):
        keep, stop = True, False
        def replace(m):
            nonlocal keep, stop
            if m.group(2):
                v = evaluate(m.group(3), features)
                op = m.group(2)
                if op == 'include if' and not v or op == 'exclude if' and v:
                    keep = False
                if op == 'continue if' and not v or op == 'stop if' and v:
                    stop = True
                return ''
            if m.group(4):
                return m.group(6) if evaluate(m.group(5), features) else (m.group(8) or '')
            if evaluate(m.group(11), features):
                features.add(m.group(10))
            return ''
        new = OP.sub(replace, line)
        if stop:
            break
        if '{' in new or '}' in new:
            raise ValueError('line %d: a directive that does not parse: %s' % (i + 1, line))
        if keep:
            kept.append(new.rstrip())
    return '\n'.join(kept)

RETURNS = ("success open_err symbol_err service_err system_err buf_err perm_denied auth_err "
           "cred_insufficient authinfo_unavail user_unknown maxtries new_authtok_reqd acct_expired "
           "session_err cred_unavail cred_expired cred_err no_module_data conv_err authtok_err "
           "authtok_recover_err authtok_lock_busy authtok_disable_aging try_again ignore abort "
           "authtok_expired module_unknown bad_item conv_again incomplete default").split()
LINE = re.compile(r'^(-?)(auth|account|password|session)\s+(\[[^\]]*\]|\S+)\s+(\S+)(\s+.*)?$')

def check_pam(name, text, label):
    rows = []
    for n, line in enumerate(text.split('\n'), 1):
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        m = LINE.match(line)
        if not m:
            fail('%s [%s] line %d: not a PAM line: %s' % (name, label, n, line))
            continue
        kind, control, module = m.group(2), m.group(3), m.group(4)
        jump = 0
        if control.startswith('['):
            pairs = control[1:-1].split()
            if not pairs:
                fail('%s [%s] line %d: empty control' % (name, label, n))
            for p in pairs:
                k, _, v = p.partition('=')
                if k not in RETURNS or not (v in ('ignore', 'bad', 'die', 'ok', 'done', 'reset') or v.isdigit()):
                    fail('%s [%s] line %d: bad control %s' % (name, label, n, p))
                if v.isdigit():
                    jump = max(jump, int(v))
        elif control not in ('required', 'requisite', 'sufficient', 'optional', 'include', 'substack'):
            fail('%s [%s] line %d: bad control %s' % (name, label, n, control))
        if not module.endswith('.so'):
            fail('%s [%s] line %d: module %s' % (name, label, n, module))
        rows.append((kind, control, module, jump, line))
    for i, (kind, _, _, jump, line) in enumerate(rows):
        after = sum(1 for r in rows[i + 1:] if r[0] == kind)
        if jump > after:
            fail('%s [%s]: jump %d past the end of the %s section: %s' % (name, label, jump, kind, line))
    return rows

# Every line naming pam_truid is under with-truid and nothing else decides it.
for name in PAM_FILES:
    for n, line in enumerate(open(os.path.join(src, name)).read().split('\n'), 1):
        if 'pam_truid' in line and '{include if "with-truid"}' not in line:
            fail('%s line %d names pam_truid outside {include if "with-truid"}' % (name, n))

readme = open(os.path.join(src, 'README')).read()
if not readme.split('\n')[0].strip():
    fail('README: no profile name on its first line')
if 'with-truid::' not in readme:
    fail('README does not document with-truid')

renderings = 0
for k in range(len(FEATURES) + 1):
    for chosen in itertools.combinations(FEATURES, k):
        label = ','.join(chosen) or 'none'
        os.makedirs(os.path.join(out, label), exist_ok=True)
        for name in PAM_FILES + OTHER_FILES:
            try:
                text = render(open(os.path.join(src, name)).read(), chosen)
            except ValueError as e:
                fail('%s [%s]: %s' % (name, label, e))
                continue
            renderings += 1
            if name in OTHER_FILES:
                if name == 'REQUIREMENTS' and ('truid' in text) != ('with-truid' in chosen):
                    fail('REQUIREMENTS [%s]: pam_truid text %s' % (label, 'missing' if 'with-truid' in chosen else 'present'))
                continue
            rows = check_pam(name, text, label)
            truid = [r for r in rows if 'pam_truid' in r[2]]
            if name in ('system-auth', 'password-auth') and 'with-truid' in chosen:
                if len(truid) != 1 or truid[0][:3] != ('auth', 'requisite', 'pam_truid.so'):
                    fail('%s [%s]: pam_truid lines %s, want one "auth requisite pam_truid.so"' % (name, label, [r[4] for r in truid]))
                auth = [r for r in rows if r[0] == 'auth']
                unix = [i for i, r in enumerate(auth) if r[2] == 'pam_unix.so']
                at = [i for i, r in enumerate(auth) if r[2] == 'pam_truid.so']
                if not (len(unix) == 1 and at and at[0] == unix[0] + 1):
                    fail('%s [%s]: pam_truid is not right after the password (pam_unix)' % (name, label))
            elif truid:
                fail('%s [%s]: pam_truid without with-truid: %s' % (name, label, truid[0][4]))
            with open(os.path.join(out, label, name), 'w') as f:
                f.write(text + '\n')
if errors:
    print('\n'.join(errors), file=sys.stderr)
    sys.exit(1)
print('authselect: %d renderings of %d files with %d feature sets parse and check' %
      (renderings, len(PAM_FILES + OTHER_FILES), 2 ** len(FEATURES)))
EOF
note "ok: the authselect profile's directives parse, every rendering is valid PAM, pam_truid only under with-truid ($(secs "$t") s)"

# Real libpam runs the rendered auth stacks. pam_debug stands for the password (pam_unix) and
# for the code (pam_truid) with the answer each scenario needs; every other module of the
# auth section answers success (pam_debug), except pam_permit and pam_deny, which stay.
t=$(date +%s)
pam_run() { # FEATURES FILE UNIX TRUID -> prints the pamtester result; TRUID may be "marker"
    local dir=$work/pam/$1-$2-$3-$4
    mkdir -p "$dir"
    printf 'auth required pam_deny.so\naccount required pam_deny.so\n' > "$dir/other"
    python3 - "$work/authselect/$1/$2" "$3" "$4" "$dir/asked" > "$dir/svc" <<'PY'
import re, sys
path, unix, truid, marker = sys.argv[1:]
for line in open(path):
    m = re.match(r'^(auth)\s+(\[[^\]]*\]|\S+)\s+(\S+)', line)
    if not m:
        continue
    module = m.group(3)
    if module == 'pam_unix.so':
        module = 'pam_debug.so auth=' + unix
    elif module == 'pam_truid.so':
        module = ('pam_exec.so quiet /usr/bin/touch ' + marker) if truid == 'marker' else 'pam_debug.so auth=' + truid
    elif module not in ('pam_permit.so', 'pam_deny.so'):
        module = 'pam_debug.so auth=success'
    print('auth', m.group(2), module)
PY
    if LD_PRELOAD=libpam_wrapper.so PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$dir" \
        pamtester svc root authenticate > "$dir/out" 2>&1 < /dev/null; then
        echo success
    else
        echo refused
    fi
}
expect_pam() { # WANT FEATURES FILE UNIX TRUID
    local got
    got=$(pam_run "$2" "$3" "$4" "$5")
    [ "$got" = "$1" ] || fail "$3 with features [$2], password $4, code $5: $got, expected $1 ($(cat "$work/pam/$2-$3-$4-$5/svc"))"
}
runs=0
for file in system-auth password-auth; do
    for features in none with-faillock without-nullok; do
        expect_pam success "$features" "$file" success success
        expect_pam refused "$features" "$file" auth_err success
        expect_pam refused "$features" "$file" auth_err marker
        runs=$((runs + 3))
    done
    for features in with-truid with-truid,with-faillock with-truid,with-faillock,without-nullok; do
        expect_pam success "$features" "$file" success success   # password and code
        expect_pam refused "$features" "$file" success auth_err  # a wrong code
        expect_pam success "$features" "$file" success ignore    # the module stands aside: the password decides
        expect_pam refused "$features" "$file" auth_err success  # a wrong password, whatever the code
        expect_pam refused "$features" "$file" auth_err ignore
        expect_pam refused "$features" "$file" authinfo_unavail success
        expect_pam refused "$features" "$file" success authinfo_unavail   # tru.ID unreachable, failmode secure
        runs=$((runs + 7))
        # The code is asked after a right password, never after a wrong one.
        pam_run "$features" "$file" success marker > /dev/null
        [ -e "$work/pam/$features-$file-success-marker/asked" ] || fail "$file [$features]: the code was not asked after the right password"
        pam_run "$features" "$file" auth_err marker > /dev/null
        [ ! -e "$work/pam/$features-$file-auth_err-marker/asked" ] || fail "$file [$features]: the code was asked after a wrong password"
        runs=$((runs + 2))
    done
    # Without with-truid the code is never asked.
    pam_run none "$file" success marker > /dev/null
    [ ! -e "$work/pam/none-$file-success-marker/asked" ] || fail "$file without with-truid: pam_truid ran"
done
note "ok: real libpam ran $runs rendered auth stacks: with-truid asks the code after a right password only, a wrong code refuses, standing aside leaves the password to decide; without it no code ($(secs "$t") s)"

# --------------------------------------------------------------------------------------
# truid-pam check reports SELinux (not enabled on this host)

t=$(date +%s)
cargo build --locked --bin truid-pam > "$work/cargo.log" 2>&1 || fail "cargo build truid-pam: $(tail -5 "$work/cargo.log")"
target=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
"$target/debug/truid-pam" check --config "$work/no-such-config.toml" > "$work/check.out" 2>&1 || true
grep -qE '^ok   selinux: not enabled \(' "$work/check.out" || fail "truid-pam check: $(cat "$work/check.out")"
note "ok: truid-pam check: $(grep "^ok   selinux" "$work/check.out") ($(secs "$t") s)"

note "all SELinux and authselect checks passed in $(secs "$started") s"
