from alpine as Base
Run echo x
cOpY a b
EnV x=y
label a=b
arg Z
