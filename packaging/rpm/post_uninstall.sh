# %postun of pam_truid: on erase ($1 = 0), not on upgrade, remove what the module and
# truid-pam made at run time. A changed /etc/security/pam_truid.toml is kept by rpm
# as pam_truid.toml.rpmsave.
if [ "$1" = 0 ]; then
    rm -f /etc/security/.pam_truid.toml.lock
    rm -rf /run/pam_truid
fi
