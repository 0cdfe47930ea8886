# terraform init -backend-config=environments/staging.backend.hcl
bucket = "mlops-terraform-state"   # created once, by hand or by an organisation-wide stack
key    = "mlops/staging/terraform.tfstate"
region = "eu-west-1"
